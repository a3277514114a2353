"""`saesteer eval`: evaluate any SAE(s) on held-out text, side by side."""

from __future__ import annotations

import dataclasses
import sys

from saesteer.boundary import print_error

NAME = "eval"
ORDER = 35
HELP = "evaluate any SAE(s) on held-out text: EV, MSE, L0, dead/dense, CE/KL spliced, shrinkage, absorption, probing"
DESCRIPTION = """\
Evaluate SAEs from any source (saesteer, SAELens folders or registry ids, sparsify, dictionary_learning,
Gemma Scope, OpenAI) on held-out text, side by side:

  activations  explained variance, MSE, L0, dead and dense fractions on the held-out tokens, cosine
               similarity of x and its reconstruction, relative norm |x_hat|/|x| (shrinkage), L1;
               Matryoshka SAEs per nested prefix
  model        CE loss with the SAE spliced in, zero-ablated and clean, CE loss recovered, KL
  absorption   SAEBench-style first-letter feature absorption (single-token words of the vocabulary)
  probing      SAEBench-style sparse probing: toy-world concepts on the toy model, or labelled text
               (--probing-dataset FILE.jsonl with text and label columns); one set for every SAE

The held-out text is --dataset's --split (default: validation); without --dataset, the text each SAE's
training evaluated on (saesteer.json), else --split of its training data (the toy corpus only for the
toy model). Text an SAE was trained on is refused (--allow-eval-overlap true evaluates on it anyway).
Each SAE's text is read and packed as that SAE was trained (its dataset configuration and text column;
its cache's context length, BOS policy and separator, else cfg.json's context_size and prepend_bos)
unless --dataset-config / --text-column / --context-length / --bos-policy / --separator say; each
distinct text is read once.
With --cache, the activation metrics of an SAE trained by `saesteer train` on that cache use the rows
its training held out (the same figures `train` reported), and the CE contexts are the ones its training used.

examples:
  saesteer eval --sae runs/toy/saes/topk_k32_f4096 --model toy --out evals/toy
  saesteer eval --sae a=runs/x/saes/topk_k32_f4096 --sae b=runs/x/saes/matryoshka_batchtopk_k32_f4096 \\
      --cache caches/x --out evals/x
  saesteer eval --sae sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre --model gpt2 --dataset text.jsonl
  saesteer eval --sae ckpts/run/layers.6 --model EleutherAI/pythia-70m --dataset text.jsonl   # sparsify
  saesteer eval --sae gs/params.npz --model google/gemma-2-2b --hook blocks.20.hook_resid_post --dataset t.jsonl"""


def add_arguments(parser) -> None:
    import argparse

    from evals.config import EvalConfig
    from saesteer.configargs import add_dataclass_arguments
    from training.text import TextConfig

    g = parser.add_argument_group("SAEs and model")
    g.add_argument("--sae", action="append", default=[], metavar="[NAME=]SAE", required=True,
                   help="SAE: a folder (saesteer, SAELens, sparsify, dictionary_learning, Gemma Scope), an OpenAI .pt file, or "
                        "sae_lens:RELEASE/SAE_ID; repeat to compare several (name them NAME=SAE)")
    g.add_argument("--model", default=None,
                   help="'toy', a HuggingFace model name, or a local model directory (default: the model the "
                        "SAEs' saesteer.json records, else the one --cache records)")
    g.add_argument("--allow-model-mismatch", action="store_true",
                   help="evaluate with --model even if the SAEs record another model")
    g.add_argument("--hook", default=None, help="hook point of SAEs whose files do not record one")
    g.add_argument("--device", default=None, help="device for the model and SAEs (default: cuda if available, else cpu)")
    g.add_argument("--out", default=None, metavar="DIR", help="write eval.json and eval.html there")
    g.add_argument("--cache", default=None, metavar="DIR",
                   help="activation cache an SAE was trained on: its held-out rows give the activation metrics")
    g.add_argument("--split", default=None, help="split of --dataset holding the held-out text (default: "
                                                  "validation; a local file, or data with one split: that split)")
    g.add_argument("--quiet", action="store_true", help="no progress lines (what each step does)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (over the held-out and CE contexts, the absorption words and letters, "
                        "the probing tasks)")
    add_dataclass_arguments(parser, EvalConfig, title="evaluation")
    text = add_dataclass_arguments(parser, TextConfig, title="held-out text", skip=("split", "dataset"))
    text.add_argument("--dataset", default=argparse.SUPPRESS, metavar="STR",
                      help="held-out text: 'toy', a local .json/.jsonl/.parquet/.csv/.txt file or folder, a "
                           "save_to_disk folder, a mapping train=PATH,validation=PATH, or a HuggingFace hub dataset name (default: the text the "
                           "SAEs' training evaluated on, else their training data; toy for the toy model)")


def run(args) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print_error(e)
        return 2


def _say(args):
    return (lambda _: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


def _run(args) -> int:
    from pathlib import Path

    import torch

    from evals.absorption import FirstLetterWords
    from evals.activations import Collector, check_widths
    from evals.config import EvalConfig
    from saesteer.configargs import dataclass_from_args
    from training.text import TextConfig

    say = _say(args)
    cfg = dataclass_from_args(EvalConfig, args)
    text = dataclass_from_args(TextConfig, args, split=args.split or _default_split(getattr(args, "dataset", None)))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from saes.devices import refuse_mps_float64

    refuse_mps_float64(device, "evaluation")
    if args.out:  # found when writing, after the evaluation
        from saesteer.commands._out import check_out_folder

        check_out_folder(args.out, "eval writes eval.json and eval.html into a folder")
    if getattr(args, "dataset", None) and not args.cache:  # the flags' text, read as given: its files and split
        from training.text import resolve_data

        resolve_data(text)  # local data that is not there, said before the model loads
    loaded = _load_saes(args, device)
    cache_man = _cache_manifest(args)  # --cache's manifest: read once for every use below
    manifests = {Path(args.cache).resolve(): cache_man} if args.cache else {}  # the caches' manifests read
    model, spec, ident = _load_model(args, loaded, device, say, cache_man)
    sae_hooks = {n: (x.sae.cfg.metadata["hook_name"], x.sae.d_in) for n, x in loaded.items()}
    check_widths(model, sae_hooks)  # before any real work: a width that does not fit the hook is refused
    targets = _transcoder_targets(model, loaded)
    tokenizer = model.tokenizer

    rows, rows_source, keep_ids, data_info = {}, {}, None, {}
    ce_from_cache, cache_text = set(), None
    if args.cache:
        rows, rows_source, keep_ids, text, ce_from_cache, data_info, cache_text = _cache_rows(args, cfg, loaded, model,
                                                                                              text, say, cache_man)
    trained = _trained_texts(loaded, manifests)
    # each SAE's text read and packed as its training read it; each distinct text is read once (SAEs whose
    # training took its CE contexts from --cache read those contexts, a group of their own)
    groups = _group_by_text(_texts_as_trained(args, text, loaded, ident, cache_text, say, trained), ce_from_cache)
    excluded = _excluded_ids(cfg, tokenizer, loaded)
    # the model's activations over held-out contexts: collected once per contexts for every use
    collected = Collector(model, cfg.model_batch_size, progress=not args.no_progress)
    probing = None
    # the first-letter words and the model's activations on them: read once per hook for every group
    words = FirstLetterWords(model, tokenizer, cfg.absorption_prefix, not args.no_progress) if cfg.absorption else None
    results, texts = {}, []
    for i, (sae_text, names, from_cache) in enumerate(groups):
        group = {n: loaded[n] for n in names}
        if not from_cache:  # recorded as read: the column a pretokenized dataset's ids are in, its rows' separator
            sae_text = _rows_as_read(args, sae_text, tokenizer, names, loaded, trained)
            sae_text = _special_tokens_read(sae_text, tokenizer, say)
        if len(groups) > 1:
            say(f"SAEs {', '.join(names)}: " + ("contexts of the cache (as their training read them)" if from_cache
                                                else _describe_text(sae_text)))
        trained_on = _training_texts(names, trained) or ([cache_text] if cache_text else [])
        tokens, overlap = _contexts(sae_text, tokenizer, max(cfg.contexts, cfg.ce_contexts), cfg.ce_contexts,
                                    args.cache if from_cache else None, trained_on, cfg.allow_eval_overlap, say,
                                    cache_man)
        heldout = _group_activations(cfg, group, targets, tokens, excluded, rows, collected, say)
        if cfg.probing and i == 0:
            # one probing set for every SAE, cut to the shortest context any SAE is fed; read after the
            # first group's activations, which it often is (the toy validation text): then no forward pass
            probing = _probing_inputs(cfg, model, spec, _latent_hooks(loaded), text,
                                      min(t.context_length for t, _, _ in groups), excluded, collected, say)
        got, record = _evaluate_group(cfg, model, group, tokens, heldout, excluded, keep_ids, rows, rows_source,
                                      data_info, probing, words, say, not args.no_progress)
        record = {**_text_record(cache_text[0] if from_cache else sae_text, from_cache), **record, "overlap": overlap}
        for name in names:
            got[name]["text"] = record
        results.update(got)
        texts.append({"saes": list(names), **record})
    results = {n: results[n] for n in loaded}  # in the order given
    _print_table(results)
    _note_saelens_conventions(results, cfg)
    _note_other_exclusions(excluded, tokenizer, loaded)
    data = {**(texts[0] if len(texts) == 1 else {"texts": texts}), "excluded_token_ids": list(excluded), **data_info}
    data.pop("saes", None)
    data.pop("target_rows", None)
    if args.out:
        _write_report(args.out, results, model, data, cfg)
    return 0


def _excluded_ids(cfg, tokenizer, loaded: dict) -> tuple[int, ...]:
    """Token ids whose positions are left out of the activation metrics and kept clean when an SAE is
    spliced in: BOS as --exclude-bos says, and the other tokens an SAE's training cache left out (its
    saesteer.json's `exclude_tokens`, e.g. `special`: the EOS between documents too), which it never saw.
    The same positions for every SAE, so that side by side they read the same tokens: the union over the
    SAEs (`_note_other_exclusions` names an SAE whose training read positions left out here)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = {i for _, trained in _trained_exclusions(tokenizer, loaded).values() for i in trained}
    ids.discard(bos)  # BOS is the flag's to decide
    if cfg.exclude_bos and bos is not None:
        ids.add(int(bos))
    return tuple(sorted(int(i) for i in ids))


def _trained_exclusions(tokenizer, loaded: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (the `saesteer cache --exclude-tokens` policy, the ids it leaves out with this tokenizer) of
    each SAE whose saesteer.json records its training cache's (SAEs of other libraries record none)."""
    from training.plan import excluded_ids

    out = {}
    for name, item in loaded.items():
        policy = ((item.provenance or {}).get("data") or {}).get("exclude_tokens")
        if policy in ("none", "bos", "special"):
            out[name] = (policy, tuple(sorted(int(i) for i in excluded_ids(tokenizer, policy))))
    return out


def _note_other_exclusions(excluded: tuple[int, ...], tokenizer, loaded: dict) -> None:
    """A line for each SAE measured without positions its training cache kept: another SAE's cache left
    out more (the union is left out for all), or --exclude-bos (the default) against a cache that kept BOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    for name, (policy, ids) in _trained_exclusions(tokenizer, loaded).items():
        fixes = []
        if bos is not None and bos in excluded and bos not in ids:
            fixes.append("pass --exclude-bos false")
        if set(ids) - {bos} != set(excluded) - {bos}:
            fixes.append("evaluate it alone")
        if fixes:
            print(f"note: SAE {name!r} was trained without token ids {list(ids)} (its cache's --exclude-tokens "
                  f"{policy}) but is measured without {list(excluded)}, the same positions as every SAE given "
                  f"(eval.json data.excluded_token_ids): {' and '.join(fixes)} to measure it on the positions its "
                  f"training read")


def _group_activations(cfg, group: dict, targets: dict, tokens, excluded, rows, collected, say):
    """The held-out activations of SAEs that read the same text: at the hooks of those without
    activation `rows` (from --cache), collected once over `tokens` (`collected`: an `evals.activations.
    Collector`); SAEs with rows read the model over `tokens` for CE only (then only the positions)."""
    from evals.activations import positions

    hooks = _all_hooks({n: x for n, x in group.items() if n not in rows}, targets)
    if not hooks:  # every SAE reads its rows: only the positions, for the record
        return positions(tokens[: cfg.contexts], excluded)
    say(f"collecting activations at {', '.join(hooks)} over {min(cfg.contexts, len(tokens))} held-out contexts")
    return collected(hooks, tokens[: cfg.contexts], excluded)


def _evaluate_group(cfg, model, group: dict, tokens, heldout, excluded, keep_ids, rows, rows_source, data_info, probing,
                    words, say, progress: bool = False):
    """(results, what was read) of SAEs that read the same text (`tokens`, their activations
    `heldout`): each SAE evaluated (evals.run.evaluate_saes)."""
    from evals.run import EvalInputs, evaluate_saes

    target_rows = data_info.get("target_rows")
    inputs = EvalInputs(model, heldout, tokens[: cfg.ce_contexts], keep_ids if keep_ids is not None else excluded,
                        tokenizer=model.tokenizer, rows={n: r for n, r in rows.items() if n in group},
                        rows_source=rows_source,
                        target_rows={n: r for n, r in target_rows.items() if n in group} if target_rows else None,
                        probing=probing, absorption_words=words,
                        allow_model_mismatch=True)  # checked when the model was loaded (_load_model), flag and all
    record = {"contexts": int(heldout.tokens.shape[0]), "tokens": int(heldout.row_context.numel()),
              "ce_contexts": int(len(inputs.ce_tokens))}
    return evaluate_saes(group, inputs, cfg, say, progress), record


def _latent_hooks(saes: dict) -> list[str]:
    """The hooks the SAEs' latents are computed from (a transcoder's input hook, not its target)."""
    return sorted({x.sae.cfg.metadata["hook_name"] for x in saes.values()})


def _all_hooks(saes: dict, targets: dict) -> list[str]:
    """The hooks the SAEs read, and the target hooks of the transcoders among them."""
    return sorted({x.sae.cfg.metadata["hook_name"] for x in saes.values()} | {targets[n] for n in saes if n in targets})


def _text_record(text, from_cache: bool = False) -> dict:
    """How the held-out text was read and packed (eval.json's data / each SAE's `text`); `contexts_from`
    "cache": the contexts are the last ones stored in --cache (`text` is the cache's training text)."""
    return {"contexts_from": "cache" if from_cache else "dataset", "dataset": text.dataset,
            "dataset_config": text.dataset_config, "split": text.split, "text_column": text.text_column, "txt_documents": text.txt_documents,
            "context_length": text.context_length, "bos_policy": text.bos_policy, "separator": text.separator,
            "special_tokens": text.special_tokens}


def _describe_text(text) -> str:
    return (f"split {text.split!r} of {text.dataset}, column {text.text_column!r}, {text.context_length}-token "
            f"contexts, BOS {text.bos_policy}, separator {text.separator}")


def _group_by_text(texts: dict, from_cache: set) -> list[tuple]:
    """[(text, [SAE names], from the cache)]: the SAEs that read the same text, in the order first
    given; SAEs whose training took its CE contexts from the cache (`from_cache`) read those, one
    group whatever their text records (the cache's contexts do not depend on it)."""
    groups: dict[str, tuple] = {}
    for name, text in texts.items():
        key = "the cache" if name in from_cache else repr(sorted(dataclasses.asdict(text).items()))
        groups.setdefault(key, (text, [], name in from_cache))[1].append(name)
    return list(groups.values())


def _texts_as_trained(args, text, loaded: dict, ident, cache_text, say, trained: dict) -> dict:
    """{SAE name: the held-out text it is evaluated on}: `text` (the flags' or --cache's), else
    (no --dataset, no --cache) the text its own training evaluated on or read; read (text column,
    .txt reading) and packed (context length, BOS, separator) as that SAE was trained, each setting
    given as a flag winning. An SAE that records no text reads the first recorded one. `trained`:
    `_trained_texts`."""
    out: dict = {}
    pick_recorded = not args.cache and "dataset" not in vars(args)  # never the toy corpus for another model
    fallback = None
    for name, item in loaded.items():
        own = text
        if pick_recorded:
            own = _recorded_text(text, {name: item}, ident, say, required=False)
            if own is None:
                continue  # records nothing: decided below
        trained_on = _training_texts([name], trained) or ([cache_text] if cache_text else [])
        own = _read_as_trained(args, own, item, trained_on, say)
        fallback = fallback or own
        out[name] = _packed_as_trained(args, own, item, say, trained[name])
    for name, item in loaded.items():
        if name not in out:
            base = fallback if fallback is not None else _recorded_text(text, {}, ident, say)
            out[name] = _packed_as_trained(args, base, item, say, trained[name])
    return {n: out[n] for n in loaded}


def _transcoder_targets(model, loaded: dict) -> dict[str, str]:
    """The target hook of each transcoder among the SAEs, its pair checked on the model (both hooks
    exist, the target runs after the input, the widths are d_in and d_out)."""
    from saes.hookpoints import check_transcoder_hooks, transcoder_target

    out = {}
    for name, item in loaded.items():
        sae = item.sae
        if sae.is_transcoder:
            out[name] = transcoder_target(sae, f"transcoder {name!r}")
            check_transcoder_hooks(model, sae.cfg.metadata["hook_name"], out[name], f"transcoder {name!r}",
                                   d_in=sae.d_in, d_out=sae.d_out)
    return out


def _load_saes(args, device) -> dict:
    """Each --sae resolved (any supported format) on `device`; a failure names the SAE and its spec."""
    from saes.formats import resolve_sae
    from saesteer.commands._steering import CLIError, parse_sae_args

    try:
        specs = parse_sae_args(args.sae)
    except CLIError as e:
        raise ValueError(str(e)) from None
    loaded = {}
    for name, spec in specs.items():
        try:
            loaded[name] = resolve_sae(spec, hook=args.hook, model=args.model, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"cannot load SAE {name!r} from {spec}: {e}") from None
    return loaded


def _cache_manifest(args):
    """--cache's manifest (None without --cache), read once for the command."""
    from training.manifest import read_manifest

    return read_manifest(args.cache) if args.cache else None


def _load_model(args, loaded, device, say, cache_man):
    """(the model, its spec for probing, its identity): --model checked against the SAEs' recorded
    model, or that model (saes.identity)."""
    from saes.identity import identity_of_model
    from saesteer.commands._steering import CLIError
    from saesteer.commands._steering import load_model as load_checked_model

    say(f"loading model {args.model or '(the one the SAEs' + (' or the cache' if args.cache else '') + ' record)'}")
    args.device = device
    try:
        model = load_checked_model(args, loaded, cache=args.cache, cache_manifest=cache_man)
    except CLIError as e:
        raise ValueError(str(e)) from None
    ident = identity_of_model(model)
    spec = "toy" if ident is not None and ident.source == "toy" else (args.model or "")
    return model, spec, ident


def _write_report(out_dir: str, results, model, data: dict, cfg) -> None:
    """eval.json and eval.html in `out_dir` (created if missing)."""
    from pathlib import Path

    from evals.report import eval_document, write_html, write_json
    from saesteer.models import model_id

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = eval_document(results, model=model_id(model), data=data, config=dataclasses.asdict(cfg))
    write_json(out / "eval.json", doc)
    write_html(out / "eval.html", doc)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.html'}")


def _default_split(dataset: str | None) -> str:
    """The split read when --split is not given: 'validation', or the only split of local data
    that has one (a single file is the split 'train': `training.splits`)."""
    from training.splits import local_splits, looks_local

    if dataset and dataset != "toy" and looks_local(dataset):
        splits = local_splits(dataset)
        if "validation" not in splits and len(splits) == 1:
            return next(iter(splits))
    return "validation"


def _recorded_text(text, loaded: dict, ident, say, required: bool = True):
    """The held-out text when --dataset is not given: the text the SAEs' training evaluated on
    (`ce_eval_data`), else --split of the data they were trained on; the toy corpus only for the
    toy model. An SAE that records neither, on another model, needs --dataset (None when not
    `required`)."""
    for name, item in loaded.items():
        data = (item.provenance or {}).get("data") or {}
        ce = data.get("ce_eval_data") or {}
        if ce.get("dataset") and ce.get("split") and not ce.get("trained_on"):
            say(f"held-out text: split {ce['split']!r} of {ce['dataset']} (the CE text the training of SAE {name!r} "
                f"read; --dataset picks another)")
            return dataclasses.replace(text, dataset=ce["dataset"], dataset_config=None, split=ce["split"])
        if data.get("dataset"):
            say(f"held-out text: split {text.split!r} of {data['dataset']} (the data SAE {name!r} was trained on; "
                f"--dataset picks another)")
            return dataclasses.replace(text, dataset=data["dataset"], dataset_config=None)
    if not required:
        return None
    if ident is not None and ident.source == "toy":
        return text
    raise ValueError(f"no --dataset, and the SAE(s) record no training data: pass --dataset with held-out text for "
                     f"{ident.id if ident is not None else 'the model'} (the toy corpus is the default only for the "
                     f"toy model)")


READING_FLAGS = {"dataset_config": "--dataset-config", "text_column": "--text-column",
                 "txt_documents": "--txt-documents"}


def _read_as_trained(args, text, item, trained_on: list, say):
    """`text` read as the SAE `item`'s training read it (its dataset configuration, text column, .txt
    reading) when it is that SAE's training data (`trained_on`) or the CE text its training read, for
    each of those not given as a flag: a dataset whose text is in 'content' was trained on with
    --text-column content, and eval without it failed on the very text training recorded. The
    configuration (a hub dataset's subset) only when `text` is the training dataset itself: another
    dataset has configurations of its own, and its column is the one training read its CE text from
    (`training.heldout.other_dataset_column`)."""
    from training.heldout import other_dataset_column

    ce_set = (((item.provenance or {}).get("data") or {}).get("ce_eval_data") or {}).get("dataset")
    for train_text, _ in trained_on:
        if text.dataset not in (train_text.dataset, ce_set):
            continue
        same = text.dataset == train_text.dataset
        read = train_text if same else dataclasses.replace(train_text, text_column=other_dataset_column(train_text))
        keys = [k for k in READING_FLAGS if k != "dataset_config" or same]
        changes = {k: getattr(read, k) for k in keys if not hasattr(args, k) and getattr(read, k) != getattr(text, k)}
        if changes:
            say("held-out text read as the SAE's training read it: "
                + ", ".join(f"{READING_FLAGS[k]} {v}" for k, v in changes.items()) + " (give the flag to choose another)")
            return dataclasses.replace(text, **changes)
        return text
    return text


PACKING_FLAGS = {"context_length": "--context-length", "bos_policy": "--bos-policy", "separator": "--separator",
                 "special_tokens": "--special-tokens"}


def _packed_as_trained(args, text, item, say, got):
    """`text` packed as the SAE `item` was trained (context length, BOS policy, separator, special tokens
    written out read as text or matched), for each
    of those not given as a flag: from the training text it records (its cache's manifest), else from
    cfg.json (`context_size`; the BOS policy its saesteer.json records, else cfg.json's `prepend_bos`:
    "doc" reads as false there). An SAE fed longer contexts or another BOS than it was
    trained on reads other activations, so the flag defaults would silently measure something else.
    `got`: its training text (`_trained_texts`)."""
    from saes.bos import trained_bos_policy

    meta = item.sae.cfg.metadata or {}
    wanted: dict = {}
    if _records_packing(item, got):
        # special tokens written out as its training read them: "auto" is an SAE from before that was recorded
        wanted = {k: getattr(got[0], k) for k in PACKING_FLAGS if getattr(got[0], k) != "auto"}
    else:
        if meta.get("context_size"):
            wanted["context_length"] = int(meta["context_size"])
        if (policy := trained_bos_policy(item)) is not None:
            wanted["bos_policy"] = policy
        elif meta.get("prepend_bos") is not None:
            wanted["bos_policy"] = "prepend" if meta["prepend_bos"] else "none"
    # a flag given on the command line wins; nothing recorded keeps the flag default
    changes = {k: v for k, v in wanted.items() if not hasattr(args, k) and v != getattr(text, k)}
    if not changes:
        return text
    say("contexts packed as the SAE was trained: " + ", ".join(f"{PACKING_FLAGS[k]} {v}" for k, v in changes.items())
        + " (give the flag to choose another)")
    return dataclasses.replace(text, **changes)


def _rows_as_read(args, text, tokenizer, names, loaded: dict, trained: dict):
    """`training.text.text_as_read` of the held-out text of the SAEs `names`: a pretokenized dataset's
    rows must hold between documents what the separator (--separator, else the one their training
    recorded) puts there; refused naming where that separator came from."""
    from training.pretokenized import SeparatorMismatchError
    from training.text import text_as_read

    recorded = any(_records_packing(loaded[n], trained[n]) for n in names)
    try:
        return text_as_read(text, tokenizer, separator_given="separator" in vars(args) or recorded)
    except SeparatorMismatchError as e:
        if "separator" in vars(args):
            raise
        raise ValueError(f"{e.rows}; SAE {', '.join(names)} was trained with separator {text.separator} ({e.puts} "
                         f"between documents): pass --separator {e.fits[0] if e.fits else 'rows'} to evaluate on these "
                         f"rows as they are, or held-out text with --dataset (packed as its training)") from None


def _special_tokens_read(text, tokenizer, say):
    """`text` with special tokens written out read as decided (`training.packing.read_special_tokens`):
    as the SAE's training read them where it records that (`_packed_as_trained`), else as --special-tokens
    auto decides on the held-out text, said when any of its first documents holds one."""
    from training.packing import read_special_tokens

    text, reading = read_special_tokens(text, tokenizer)
    if reading.note():
        say(f"held-out text: {reading.note()}")
    return text


def _records_packing(item, got) -> bool:
    """Whether the SAE `item` records how its training text was packed: in its cache's manifest (while
    it is there) or, trained without a cache, in data.text. `got`: its training text (`_trained_texts`)."""
    from pathlib import Path

    data = (item.provenance or {}).get("data") or {}
    recorded = data.get("text") or (data.get("cache") and (Path(data["cache"]) / "manifest.json").is_file())
    return bool(recorded) and got is not None


def _trained_texts(loaded: dict, manifests: dict) -> dict:
    """{SAE name: the training text it records, as (TextConfig, documents read or None), or None}:
    read once per SAE (a cache's manifest once per command: `manifests`)."""
    from training.sources import training_text_of

    return {name: training_text_of((item.provenance or {}).get("data") or {}, manifests)
            for name, item in loaded.items()}


def _training_texts(names, trained: dict) -> list:
    """The distinct training texts the SAEs `names` record (`_trained_texts`)."""
    out = []
    for name in names:
        got = trained[name]
        if got is not None and all((got[0].dataset, got[0].split) != (t.dataset, t.split) for t, _ in out):
            out.append(got)
    return out


def _contexts(text, tokenizer, n: int, n_ce: int, cache: str | None, trained_on: list, allow_overlap: bool, say,
              cache_man=None):
    """(held-out contexts [n, L], overlap reports) of `text`, refused when it is all training text
    of an SAE (training.heldout.heldout_contexts) unless `allow_overlap`; or, from `cache`, its last
    n contexts with the last `n_ce` first (the CE contexts are the first n_ce: training's last n_ce)."""
    import torch

    from training.heldout import heldout_contexts
    from training.sources import contexts_from_cache, contexts_from_text

    if cache is not None:  # training took its CE contexts from the cache (no held-out split)
        tokens = contexts_from_cache(cache, n, cache_man)
        cut = len(tokens) - min(n_ce, len(tokens))
        return (torch.cat([tokens[cut:], tokens[:cut]]),
                [{"checked": False, "note": "CE contexts from the cache, as training"}])
    if not trained_on:
        return contexts_from_text(text, tokenizer, n), [{"checked": False, "note": "the SAEs record no training text"}]
    tokens, reports = None, []
    for train_text, docs in trained_on:
        held = heldout_contexts(train_text, text, tokenizer, n, train_docs=docs, allow_overlap=allow_overlap,
                                fix="give held-out text with --dataset PATH or --split NAME, or pass "
                                    "--allow-eval-overlap true to evaluate on it anyway")
        tokens = held.tokens_NL
        reports.append(held.overlap.to_json())
        say(f"held-out text {text.dataset!r} split {text.split!r}: {held.overlap.describe()}")
        if held.overlap.in_training and not held.overlap.total:
            say(f"note: {held.overlap.in_training} of the {held.overlap.eval_documents} held-out documents are "
                f"training documents (recorded in eval.json as data.overlap)")
    return tokens, reports


def _cache_rows(args, cfg, loaded: dict, model, text, say, cache_man):
    """Activation rows per SAE from --cache: the rows an SAE's training held out when it was trained
    on this cache (recorded in its saesteer.json), else the start of the cache's seeded stream. The
    cache must be of the model (--allow-model-mismatch overrides). The CE text: --dataset when given
    (`text`), else the one training used."""
    from pathlib import Path

    from evals.activations import cache_holdout
    from saes.bos import check_cache_bos
    from saes.identity import check_same_model, identity_of_model
    from saesteer.models import OVERRIDE_FLAG
    from training.heldout import eval_text_config
    from training.sources import text_config_from_manifest, text_documents_read

    cache = Path(args.cache).resolve()
    man = cache_man
    if not args.allow_model_mismatch:
        check_same_model(man.recorded_model(), identity_of_model(model), recorded_in=f"the cache {args.cache}",
                         given_as="the model evaluated", override=OVERRIDE_FLAG,
                         fix="pass the cache of the SAEs' model")
    for name, item in loaded.items():  # the cache's contexts must start as each SAE's training contexts did
        check_cache_bos(item, man.settings.get("bos_policy"), args.cache, policy_as="`saesteer cache --bos-policy`",
                        sae_as=f"SAE {name}")
    train_text = text_config_from_manifest(man)
    # the CE text the SAEs' training read (ce_eval_data), else --split of the cache's dataset
    ce = next(((x.provenance or {}).get("data", {}).get("ce_eval_data") or {} for x in loaded.values()
               if (x.provenance or {}).get("data", {}).get("ce_eval_data")), {})
    eval_dataset = ce.get("dataset") if ce.get("dataset") not in (None, train_text.dataset) else None
    given = "dataset" in vars(args)  # --dataset wins over what training used
    if not given:
        text = eval_text_config(train_text, eval_dataset, ce.get("split") or args.split or "validation")
    rows, source, target_rows = {}, {}, {}
    ce_from_cache = set()  # the SAEs whose training took its CE contexts from this cache
    for name, item in loaded.items():
        target = item.sae.cfg.metadata.get("hook_name_out") if item.sae.is_transcoder else None
        prov = item.provenance or {}
        data = prov.get("data") or {}
        train = (prov.get("training") or {}).get("train") or {}
        hook = item.sae.cfg.metadata["hook_name"]
        if data.get("cache") and Path(data["cache"]).resolve() == cache and train.get("holdout_tokens"):
            n, seed = int(train["holdout_tokens"]), int(train.get("seed", 0))
            buffer_rows = int(data.get("reader_buffer_rows") or (1 << 20))
            rows[name] = cache_holdout(cache, hook, n, seed, buffer_rows)
            if target:
                target_rows[name] = cache_holdout(cache, hook, n, seed, buffer_rows, target_hook=target)
            source[name] = f"the {n:,} rows its training held out of {cache} (seed {seed}, reader buffer {buffer_rows:,})"
            if not given and _ce_trained_on_cache(data):
                ce_from_cache.add(name)
        else:
            n = cfg.contexts * int(man.settings["context_length"])
            rows[name] = cache_holdout(cache, hook, n, cfg.seed, 1 << 20)
            if target:
                target_rows[name] = cache_holdout(cache, hook, n, cfg.seed, 1 << 20, target_hook=target)
            source[name] = f"the first {n:,} rows of {cache}'s stream (seed {cfg.seed}); not rows its training held out"
        say(f"{name}: {source[name]}")
    keep = tuple(int(i) for i in man.settings.get("excluded_token_ids") or ())
    info = {"cache": str(cache), **({"target_rows": target_rows} if target_rows else {})}
    return rows, source, keep, text, ce_from_cache, info, (train_text, text_documents_read(man))


def _ce_trained_on_cache(data: dict) -> bool:
    """Whether training took its CE contexts from the cache (no held-out split): as recorded before
    (`ce_eval_contexts: "cache (last shard)"`) or as a `ce_eval_data` record (`trained_on: true`)."""
    return bool((data.get("ce_eval_data") or {}).get("trained_on")) or str(data.get("ce_eval_contexts", "")).startswith("cache")


def _probing_inputs(cfg, model, spec: str, hooks, text, max_len: int, excluded, collected, say):
    """The sparse-probing set, the same for every SAE: --probing-dataset's texts (column
    --probing-text-column), each cut to `max_len` tokens (the shortest context any SAE is fed), or on
    the toy model the toy corpus's validation split packed in `max_len`-token contexts with its
    toy-world concepts as labels; the model's activations at `hooks` (where the SAEs' latents are
    computed from) read once (`collected`: contexts already collected are not run again)."""
    import torch

    from evals.probing import balanced_tasks, read_labelled_texts
    from evals.run import ProbingInputs, text_probing_data, token_labels, token_probing_data
    from training.sources import contexts_from_text

    if cfg.probing_dataset:
        pairs = read_labelled_texts(cfg.probing_dataset, cfg.probing_text_column, cfg.probing_label_column)
        pairs = _subsample_per_label(pairs, 2 * cfg.probing_max_per_class, cfg.seed)
        labels = sorted({lab for _, lab in pairs})
        masks = {lab: torch.tensor([p == lab for _, p in pairs]) for lab in labels}
        tasks = balanced_tasks(masks, max_per_class=cfg.probing_max_per_class,
                               min_positives=cfg.probing_min_positives, seed=cfg.seed)
        tok = model.tokenizer
        bos = getattr(tok, "bos_token_id", None)
        toks = [_encode(tok, t, bos, max_len) for t, _ in pairs]
        say(f"sparse probing: {len(pairs)} labelled texts (up to {max_len} tokens each), {len(tasks)} tasks")
        return ProbingInputs(text_probing_data(model, hooks, toks, excluded), tasks, str(cfg.probing_dataset))
    if spec == "toy" or spec.startswith("toy:"):
        import toyworld

        toy = dataclasses.replace(text, dataset="toy", dataset_config=None, split="validation", text_column="text",
                                  context_length=max_len)
        heldout = collected(hooks, contexts_from_text(toy, model.tokenizer, cfg.contexts), excluded)
        names = list(toyworld.CONCEPTS)
        masks = token_labels(heldout, toyworld.concept_masks(heldout.tokens, names))
        tasks = balanced_tasks(masks, max_per_class=cfg.probing_max_per_class, min_positives=cfg.probing_min_positives,
                               seed=cfg.seed)
        return ProbingInputs(token_probing_data(heldout, hooks), tasks, "toyworld.concept_masks")
    say("sparse probing skipped: no labels for this model (give --probing-dataset FILE with text and label columns)")
    return None


def _encode(tok, text: str, bos, max_len: int):
    import torch

    ids = list(tok.encode(text, add_special_tokens=False))
    if bos is not None:
        ids = [int(bos)] + ids
    return torch.tensor(ids[:max_len] or [0], dtype=torch.long)


def _subsample_per_label(pairs, n: int, seed: int):
    import random

    rng = random.Random(seed)
    by: dict[str, list] = {}
    for p in pairs:
        by.setdefault(p[1], []).append(p)
    out = []
    for lab in sorted(by):
        items = by[lab]
        out += items if len(items) <= n else rng.sample(items, n)
    return out


SAELENS_FORMATS = ("sae_lens", "sae_lens_registry")


def _note_saelens_conventions(results: dict, cfg) -> None:
    """For SAEs made by SAELens (a SAELens folder or registry id, not one trained here: those record no
    `source`), whose users compare with run_evals / Neuronpedia figures: the one default that changes CE
    loss recovered most (docs/evaluation.md, "Comparing with SAELens and Neuronpedia")."""
    made_by_saelens = [r for r in results.values() if r.get("format") in SAELENS_FORMATS and r.get("source")]
    if cfg.exclude_bos and any("ce_loss_recovered" in r["metrics"] for r in made_by_saelens):
        print("note: CE loss recovered keeps BOS clean in the zero-ablated run too; SAELens's run_evals default "
              "zeroes it there (higher figures): --exclude-bos false equals its exclude_special_tokens=False "
              "(docs/evaluation.md, 'Comparing with SAELens and Neuronpedia')")


def _fmt(v, spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def _print_table(results: dict) -> None:
    cols = [("EV", "explained_variance", ".4f"), ("MSE", "mse", ".4g"), ("L0", "l0", ".2f"),
            ("dead", "eval_dead_fraction", ".2%"), ("dense", "dense_fraction", ".2%"), ("cos", "cossim", ".4f"),
            ("|x^|/|x|", "l2_ratio", ".4f"), ("CE rec", "ce_loss_recovered", ".4f"), ("KL", "kl_div", ".5f")]
    width = max([len(n) for n in results] + [4])
    print(f"{'SAE':<{width}} " + " ".join(f"{c:>9}" for c, _, _ in cols) + f" {'absorb':>8} {'probe@k':>14}")
    for name, r in results.items():
        m = r["metrics"]
        ab = (r.get("absorption") or {}).get("mean_absorption_fraction_score")
        pr = (r.get("probing") or {}).get("sae_accuracy") or {}
        probe = f"{_fmt(list(pr.values())[0], '.3f')}@{list(pr)[0]}" if pr else "-"
        print(f"{name:<{width}} " + " ".join(f"{_fmt(m.get(k), f):>9}" for _, k, f in cols)
              + f" {_fmt(ab, '.3f'):>8} {probe:>14}")
        if r.get("ce_skipped"):
            print(f"{'':<{width}}   note: no CE loss recovered or KL: {r['ce_skipped']}")
        if r.get("hook_name_out"):
            print(f"{'':<{width}}   transcoder {r['hook_name']} -> {r['hook_name_out']}"
                  f"{' (skip)' if r.get('skip_connection') else ''}: EV/MSE/cos of the target; CE rec and KL "
                  f"with its prediction in place of {r['hook_name_out']} (0 = that output zero-ablated)")
        for lv in m.get("levels") or []:
            print(f"{'':<{width}}   level width {lv['width']:>7}: EV {lv['explained_variance']:.4f}, MSE "
                  f"{lv['mse']:.4g}, L0 {lv['l0']:.2f}")
