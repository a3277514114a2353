"""`saesteer serve`: the web app over one or more feature stores (browse, search, steer)."""

from __future__ import annotations

from saesteer.boundary import print_error

NAME = "serve"
ORDER = 60
HELP = "browse feature stores and steer generation in a web browser"
DESCRIPTION = """\
Serve a web app over one or more feature stores: a feature list (sort and filter by label,
score, frequency, health, Matryoshka level), search, a page per feature (examples with per-token
activations, histogram, logit effects, neighbours, Matryoshka parent/children, label and scores),
"which features fire on my text", and a steering playground (default vs steered generations side
by side, strength sweeps). A JSON API sits behind the pages (schema at /openapi.json), and the
OpenAI-compatible steering API under /v1 (see `saesteer api`), which the playground uses too.

It listens on 127.0.0.1 only. Binding to another address needs --allow-remote and then always
requires an access token (printed at start-up; set SAESTEER_TOKEN to choose it).

The model is the one the stores record (they must agree); --model names it explicitly and is
refused for a store recorded for another model (unless --allow-model-mismatch); --model none
serves the stores browse-only. A store that cannot run the model is served browse-only, and the
start-up lines and its pages say why.

examples:
  saesteer serve --store features/toy.db
  saesteer serve --store a.db --store b.db --port 8080
  saesteer serve --store a.db --sae saes/gpt2-l6        # SAE folder not recorded in the store
  saesteer serve --store a.db --model none              # browse only: no model loaded
  saesteer serve --store a.db --host 0.0.0.0 --allow-remote --allowed-hosts box.lan"""


def add_arguments(parser) -> None:
    from saesteer.configargs import add_dataclass_arguments
    from saesteer.web.config import Limits, ServeConfig

    g = parser.add_argument_group("what to serve")
    g.add_argument("--store", action="append", default=[], metavar="FILE", required=True,
                   help="a feature store file; repeat for several stores")
    g.add_argument("--model", default=None,
                   help="'toy', a HuggingFace model name, a local model directory, or 'none' (browse only); needed "
                        "for steering and 'which features fire' (default: the model the stores record)")
    g.add_argument("--allow-model-mismatch", action="store_true",
                   help="serve --model even for stores recorded for another model")
    g.add_argument("--sae", action="append", default=[], metavar="SAE",
                   help="SAE of each --store (a folder of any supported format, or sae_lens:RELEASE/SAE_ID), in the "
                        "same order (default: the one the store recorded)")
    g.add_argument("--device", default=None, help="device for the model (default: cuda if available, else cpu)")
    s = parser.add_argument_group("access")
    s.add_argument("--allow-remote", action="store_true",
                   help="allow binding --host to a non-loopback address (a token is then always required)")
    s.add_argument("--require-token", action="store_true",
                   help="require the access token on loopback too (e.g. on a machine shared with other users)")
    add_dataclass_arguments(parser, ServeConfig, title="server", skip=("allow_remote", "require_token"))
    add_dataclass_arguments(parser, Limits, title="request limits")
    from saesteer.api.config import BatchConfig

    add_dataclass_arguments(parser, BatchConfig, title="batching (the /v1 API)")


def run(args) -> int:
    return run_server(args, pages=True)


class _Refused(Exception):
    """A start-up step that cannot go on: run_server prints `error: <message>` and exits 2."""


def run_server(args, *, pages: bool) -> int:
    """Open the stores (and model), build the app, serve it (`saesteer serve`, and `saesteer api`
    with pages=False)."""
    import sys

    from saesteer.web.listen import run_server as serve_app  # this function is run_server too

    try:  # the flags, the store files and the port are refused before the model loads
        config, limits, batch = _configs(args)
        _check_stores(args)
        sock, config = _listen(config)
        try:
            entries = _open_stores(args, limits)
        except BaseException:
            sock.close()
            raise
        app = _build_app(entries, sock, config=config, limits=limits, pages=pages, batch=batch)
        url = _announce(entries, app, sock, config, pages=pages)
    except _Refused as e:
        print_error(e)
        return 2
    ready = f"saesteer serving on {url}" if pages else f"saesteer API serving on {url.split('?')[0]}v1"
    # printed once uvicorn accepts connections: a client may connect as soon as it reads the line
    serve_app(app, sock, on_ready=lambda: print(ready, file=sys.stderr, flush=True),
              log_level="warning", proxy_headers=False, server_header=False, date_header=False)
    return 0


def _configs(args):
    """(ServeConfig, Limits, BatchConfig) from the flags."""
    from saesteer.api.config import BatchConfig
    from saesteer.configargs import dataclass_from_args
    from saesteer.web.config import Limits, ServeConfig

    try:
        config = dataclass_from_args(ServeConfig, args, allow_remote=args.allow_remote, require_token=args.require_token)
        limits = dataclass_from_args(Limits, args)
        batch = dataclass_from_args(BatchConfig, args)
    except ValueError as e:
        raise _Refused(e) from None
    return config, limits, batch


def _check_stores(args) -> None:
    """What the flags refuse of the stores: a --store that is no file or no feature store (opened and
    closed: a file of another kind is said before the model loads), a --sae count not one per --store."""
    import os

    from features import StoreError
    from saesteer.web.launch import check_sae_dirs, recorded_models

    for p in args.store:
        if not os.path.isfile(p):
            raise _Refused(f"no feature store at {p}; build one with `saesteer features build`")
    try:
        check_sae_dirs(args.sae, args.store)
        recorded_models(args.store)
    except (ValueError, StoreError) as e:
        raise _Refused(e) from None


def _open_stores(args, limits):
    """Each --store opened with its SAE and, where it can run it, the model (warnings shown once each)."""
    import logging
    import warnings

    from features import StoreError

    try:
        model, no_model_reason = _model_for(args)
    except (ValueError, OSError, StoreError) as e:
        raise _Refused(e) from None

    from saesteer.web.launch import open_entries

    logging.captureWarnings(True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            return open_entries(args.store, model=model, sae_dirs=args.sae or None, limits=limits,
                                allow_model_mismatch=args.allow_model_mismatch, no_model_reason=no_model_reason)
        except (ValueError, FileNotFoundError, StoreError) as e:
            raise _Refused(e) from None


def _listen(config):
    """(the listening socket, config with the port bound): bound now, so the port checked by the app
    and printed is the one served."""
    import dataclasses

    from saesteer.web.listen import listening_socket

    try:
        sock = listening_socket(config.host, config.port)
    except OSError as e:
        raise _Refused(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}; choose another --port "
                       f"(--port 0 picks a free one)") from None
    return sock, dataclasses.replace(config, port=int(sock.getsockname()[1]))


def _build_app(entries, sock, **kwargs):
    import os

    from saesteer.web import create_app

    token = os.environ.get("SAESTEER_TOKEN") or None
    try:
        return create_app(entries, token=token, **kwargs)
    except ValueError as e:
        sock.close()
        raise _Refused(e) from None


def _announce(entries, app, sock, config, *, pages: bool) -> str:
    """Print the start-up lines (each store and its mode, the remote warning, the /v1 address);
    return the URL to open (with the token)."""
    import sys

    token = app.state.web.token
    shown_host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "[::]") else config.host
    if ":" in shown_host and not shown_host.startswith("["):
        shown_host = f"[{shown_host}]"
    url = f"http://{shown_host}:{config.port}/" + (f"?token={token}" if token else "")
    for e in entries:
        mode = "browse + steer" if e.engine is not None else f"browse only: {e.info.browse_only_reason}"
        print(f"  store {e.id:<16} {e.info.d_sae:>7,} features  ({mode})", file=sys.stderr)
    if config.remote:
        print(f"WARNING: listening on {config.host}: anyone who can reach this port and has the token can use the app", file=sys.stderr)
    if app.state.openai is not None:
        base = f"http://{shown_host}:{config.port}/v1"
        key = "the token above" if token else "any text (loopback, no token)"
        print(f"  OpenAI-compatible API at {base} (models: {', '.join(app.state.openai.models)}; api_key: {key})",
              file=sys.stderr)
    elif not pages:
        sock.close()
        raise _Refused("no store can run the model, so there is nothing to serve on /v1; start it with --model")
    return url


def _model_for(args):
    """(the model to serve, None), or (None, why the stores are browse-only). --model is loaded as
    given (open_entries checks it against each store); without it, the model the stores record."""
    import sys

    from saes.identity import ModelIdentityError, same_model
    from saesteer.models import load_model, load_recorded_model
    from saesteer.web.launch import recorded_models

    if args.model and args.model.lower() == "none":
        return None, "the server was started with --model none"
    if args.model:
        print(f"loading model {args.model} ...", file=sys.stderr)
        return load_model(args.model, device=args.device), None
    records = [(ident, path) for ident, path in zip(recorded_models(args.store), args.store) if ident is not None]
    if not records:
        return None, "the store does not record which model it was made with (pass --model)"
    first, where = records[0]
    for ident, path in records[1:]:
        if not same_model(first, ident):
            raise ModelIdentityError(
                f"the stores were made with different models ({first.describe()} for {where}, {ident.describe()} for "
                f"{path}); serve them separately, or pass --model none to browse them all")
    print(f"loading model {first.describe()} (recorded by the store) ...", file=sys.stderr)
    try:
        return load_recorded_model(first, None, recorded_in=f"the feature store {where}", device=args.device), None
    except (ModelIdentityError, OSError) as e:  # e.g. a local directory that moved, a hub model not cached offline
        return None, str(e)
