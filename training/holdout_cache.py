"""A separate held-out cache for a training run (`train(..., holdout=reader)`, `saesteer train
--holdout-cache DIR`): rows no pass over the training cache ever holds. They stand in for the
training cache's own rows (the activation scale, b_dec's start, held-out EV and dead latents), so
they must be the same kind of rows: the same model and weights, hook point(s) and width, tokenizer,
BOS policy, context length (a row's position in its context shapes it) and excluded tokens; from a
finished cache; and of other text, which the two manifests tell where both read the same dataset
from its first document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saes.identity import same_model
from training.manifest import CacheMismatchError, Manifest


def check_holdout_cache(train: Manifest, train_dir: str | Path, held: Manifest, held_dir: str | Path,
                        hooks: list[str]) -> None:
    """Refuse (CacheMismatchError) a held-out cache `held` whose rows are not the training cache's
    kind (see the module doc) for `hooks` (the hook read, and a transcoder's target), naming both
    sides; or that reads the training text (the same cache, the same dataset split, a data file
    shared)."""
    ours, theirs = f"the training cache {train_dir}", f"--holdout-cache {held_dir}"
    if not held.complete:  # its manifest lists no shards until the build ends
        raise CacheMismatchError(f"{theirs} is not a finished cache (its `saesteer cache` is still running, or "
                                 f"stopped before the end): wait for it, or re-run the same `saesteer cache` command "
                                 f"to finish it")
    if Path(train_dir).resolve() == Path(held_dir).resolve():
        raise CacheMismatchError(f"{theirs} is the training cache itself: its rows would be trained on; cache other "
                                 f"text (e.g. the validation split) with the same model and hook, and pass that")
    fix = "cache the held-out text with the training cache's settings (`saesteer cache` with the same --model, " \
          "--hooks, --bos-policy, --context-length and --exclude-tokens)"
    diffs = _differences(train, held, hooks)
    if diffs:  # all of them at once: one re-run of `saesteer cache` fixes them
        said = "; ".join(f"{what}: {b} there, {a} in the training cache" for what, a, b in diffs)
        raise CacheMismatchError(f"{theirs} differs from {ours} in {said}; {fix}")
    shared = _shared_text(train, held)
    if shared:
        raise CacheMismatchError(f"{theirs} reads the training text ({shared}), from its first document as {ours} "
                                 f"does: its rows are training rows. Cache another split or other files")


def _differences(train: Manifest, held: Manifest, hooks: list[str]) -> list[tuple[str, Any, Any]]:
    """(what, the training cache's, the held-out cache's) for each setting the two must share."""
    out = []
    a, b = train.recorded_model(), held.recorded_model()
    a_id = a.id if a is not None else (train.settings.get("model") or {}).get("id")
    b_id = b.id if b is not None else (held.settings.get("model") or {}).get("id")
    # the project's comparison where both are recorded (a local model's copy in a folder of another name is the same)
    if not (same_model(a, b) if a is not None and b is not None else a_id == b_id):
        out.append(("model", _model(a, a_id), _model(b, b_id)))
    for hook in hooks:
        if hook not in held.hooks:
            out.append((f"hook {hook}", "cached", f"not cached (it holds {', '.join(held.hooks)})"))
        elif held.d_in[hook] != train.d_in[hook]:
            out.append((f"the width (d_in) of {hook}", train.d_in[hook], held.d_in[hook]))
    ta, tb = train.settings.get("tokenizer") or {}, held.settings.get("tokenizer") or {}
    if ta.get("sha256") != tb.get("sha256"):
        out.append(("tokenizer", _tokenizer(ta), _tokenizer(tb)))
    if train.settings.get("bos_policy") != held.settings.get("bos_policy"):
        out.append(("BOS policy", f"--bos-policy {train.settings.get('bos_policy')}",
                    f"--bos-policy {held.settings.get('bos_policy')}"))
    if train.context_length != held.context_length:
        out.append(("context length", f"--context-length {train.context_length}",
                    f"--context-length {held.context_length}"))
    ea, eb = (sorted(m.settings.get("excluded_token_ids") or ()) for m in (train, held))
    if ea != eb:
        out.append(("the positions not cached", _excluded(train, ea), _excluded(held, eb)))
    return out


def _model(ident, model_id) -> str:
    return f"{ident.describe()} ({ident.weights} weights)" if ident is not None else str(model_id)


def _excluded(man: Manifest, ids: list[int]) -> str:
    return f"--exclude-tokens {man.settings.get('exclude_tokens')} (token ids {ids})"


def _tokenizer(t: dict[str, Any]) -> str:
    return f"{t.get('name')!r} (vocabulary {t.get('vocab_size')}, sha256 {str(t.get('sha256'))[:12]})"


def _shared_text(train: Manifest, held: Manifest) -> str | None:
    """What the two caches' text has in common, as the manifests tell (both read from the first
    document): a data file both read, or the same dataset, configuration and split. None: none."""
    files = set(train.dataset_files or ()) & set(held.dataset_files or ())
    if files:
        return f"file {sorted(files)[0]}"
    da, db = train.settings.get("dataset") or {}, held.settings.get("dataset") or {}
    keys = ("name", "config", "split", "files")
    if all(da.get(k) == db.get(k) for k in keys) and da.get("name") not in (None, ""):
        return f"dataset {da.get('name')!r} split {da.get('split')!r}"
    return None


# -- where a run's held-out rows come from, as its checkpoints record it: a resume must draw them from
# the same place, or its held-out metrics (and the activation scale's check) are on other rows
def holdout_source(holdout: Any) -> dict[str, Any]:
    """The record of a run's held-out source (`training.run.train`'s `holdout`): none (the first rows
    of the training data), a cache reader (its folder, shards digest and hook), or another source."""
    if holdout is None:
        return {"from": "training data"}
    state = holdout.state_dict() if hasattr(holdout, "state_dict") else None
    if isinstance(state, dict) and "cache" in state:  # a CacheReader: its identity, not its position
        return {"from": "cache", "path": str(Path(holdout.path).resolve()), "cache": state["cache"],
                "hook": state.get("hook")}
    return {"from": "other"}


def holdout_change(saved: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """How the held-out source `now` differs from the checkpoint's `saved` one, both named; None: the
    same (a moved cache is the same one), or a checkpoint from before the record was kept."""
    if saved is None or (saved.get("from") == now.get("from") and saved.get("cache") == now.get("cache")
                         and saved.get("hook") == now.get("hook")):
        return None
    return f"its held-out rows came from {_described(saved)}, this run's come from {_described(now)}"


def _described(rec: dict[str, Any]) -> str:
    if rec.get("from") == "training data":
        return "the first rows of the training data (no --holdout-cache)"
    if rec.get("from") == "cache":
        return f"--holdout-cache {rec.get('path')} ({rec.get('hook')}, shards hash {str(rec.get('cache'))[:12]}...)"
    return "a separate held-out source"
