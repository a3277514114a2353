"""Which model an activation cache, an SAE or a feature store belongs to, as plain data.

    ident = ModelIdentity.from_json(manifest_model_identity)   # or from an older record's id
    check_same_model(ident, identity_of_model(model), recorded_in="the cache caches/x",
                     given_as="the model", override="allow_model_mismatch=True")

A `ModelIdentity` is recorded at the start of the chain (the cache's manifest, or training straight
from a model) and copied into every SAE folder (`saesteer.json`) and feature store made from it.
Wherever two of them meet, `check_same_model` compares them and refuses a mismatch naming both
sides and the override. This module only describes and compares; `saesteer.models` computes a
loaded model's identity (hashing its files), attaches it to the model (`attach_identity`) and
resolves a recorded identity back into a model (`ModelIdentity.load_spec`).

It lives in `saes` because every domain package may import `saes` and none may import the face;
it imports nothing but the standard library at import (`official_model_name` asks TransformerLens when called).

Sources: 'toy' (the toy-world model; its weights file's SHA-256), 'hub' (an HF hub name at a
commit), 'local' (an HF checkpoint directory: absolute path + SHA-256 of its weight files),
'object' (a model built in code: SHA-256 of its parameters).

Weights: 'raw' (the checkpoint's weights as they are: what saesteer loads by default) or
'processed' (TransformerLens's default weight processing applied after loading, `PROCESSING`:
what `HookedTransformer.from_pretrained` / SAELens's `HookedSAETransformer.from_pretrained` give
by default). Processing changes activations an SAE reads (centred writing weights centre the
residual stream; folded value biases change hook_z), so the same files with other weights are
another model here: the id ends in '+processed'.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

SOURCES = ("toy", "hub", "local", "object")
MODEL_ATTR = "_saesteer_identity"  # set on a model object by `attach_identity`
_FILE_HASHED = ("toy", "local")  # weights_sha256 of these is over the same kind of bytes (weight files)
_SHORT_HASH = 16  # older records keep only this many hex digits of the weights hash
WEIGHTS = ("raw", "processed")
# TransformerLens's load-time weight processing, as HookedTransformer.from_pretrained applies it by default
PROCESSING = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True}


class ModelIdentityError(ValueError):
    """A record's model cannot be determined or re-loaded."""


class ModelMismatchError(ModelIdentityError):
    """Two things that must belong to the same model record different models."""


@dataclass(frozen=True)
class ModelIdentity:
    """Who a model is. `weights_sha256` may be a 16-digit prefix in records from older versions."""

    source: str  # 'toy' | 'hub' | 'local' | 'object'
    name: str  # toy: 'toyworld-tiny'; hub: 'gpt2'; local: the directory's name; object: cfg.model_name
    revision: str | None = None  # hub: the commit HF resolved (or the revision asked for)
    path: str | None = None  # local (and toy saved elsewhere): the absolute directory
    weights_sha256: str | None = None
    d_model: int | None = None
    n_layers: int | None = None
    d_vocab: int | None = None
    weights: str = "raw"  # 'raw' | 'processed' (PROCESSING applied after loading); records without it: raw

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ModelIdentityError(f"model identity: source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.weights not in WEIGHTS:
            raise ModelIdentityError(f"model identity: weights must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ModelIdentityError(f"model identity: name must be a non-empty string, got {self.name!r}")

    @property
    def id(self) -> str:
        """A short stable id, e.g. 'hub:gpt2@607a30d7...', 'local:my-ckpt#sha256:0123456789abcdef'."""
        tail = f"@{self.revision}" if self.revision else ""
        if self.weights_sha256:
            tail += f"#sha256:{self.weights_sha256[:_SHORT_HASH]}"
        if self.weights == "processed":
            tail += "+processed"
        return f"{self.source}:{self.name}{tail}"

    @property
    def processed(self) -> bool:
        return self.weights == "processed"

    @property
    def saelens_load_kwargs(self) -> dict[str, bool]:
        """`cfg.json`'s `metadata.model_from_pretrained_kwargs`: SAELens warns users of an SAE with
        these to load the model with `HookedSAETransformer.from_pretrained_no_processing(name,
        **kwargs)`, which then has exactly the weights the SAE was trained on."""
        return {k: self.processed for k in PROCESSING}

    def describe(self) -> str:
        """The id, with the directory where there is one (what error messages show)."""
        return f"{self.id} at {self.path}" if self.path else self.id

    @property
    def saelens_model_name(self) -> str:
        """What `cfg.json`'s `metadata.model_name` says: a name SAELens users can load the model by
        (the hub name; a local checkpoint's absolute path), else our name."""
        if self.source == "local" and self.path:
            return self.path
        return self.name

    def load_spec(self) -> str | None:
        """A `saesteer.models.load_model` spec that loads this model again, or None (a model built
        in code, or a local model recorded without its directory by an older saesteer)."""
        if self.source == "toy":
            return f"toy:{self.path}" if self.path else "toy"
        if self.source == "hub":
            return f"{self.name}@{self.revision}" if self.revision else self.name
        if self.source == "local":
            return self.path
        return None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> "ModelIdentity":
        if not isinstance(record, Mapping):
            raise ModelIdentityError(f"model identity: expected a JSON object, got {type(record).__name__}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        for k in ("d_model", "n_layers", "d_vocab"):
            if values.get(k) is not None:
                values[k] = int(values[k])
        try:
            return cls(**values)
        except TypeError as e:
            raise ModelIdentityError(f"model identity: {e}") from None

    @classmethod
    def from_id(cls, text: str | None, revision: str | None = None) -> "ModelIdentity | None":
        """Parse an id string ('local:NAME#sha256:...', 'hub:NAME@REV', 'toy:...') as older
        versions recorded it; None when `text` is not such an id (e.g. SAELens's 'gpt2-small')."""
        if not isinstance(text, str):
            return None
        source, sep, rest = text.partition(":")
        if not sep or source not in SOURCES or not rest:
            return None
        weights = "processed" if rest.endswith("+processed") else "raw"
        rest, _, digest = rest.removesuffix("+processed").partition("#sha256:")
        name, rev = split_revision(rest)
        if not name:
            return None
        return cls(source, name, revision=rev or revision, weights_sha256=digest or None, weights=weights)


def _same_hash(a: str, b: str) -> bool:
    if a.startswith("sampled-") != b.startswith("sampled-"):
        return False
    n = min(len(a), len(b))
    return n >= _SHORT_HASH and a[:n] == b[:n]


# organisations the HF hub moved its legacy un-namespaced models under ("gpt2" is now
# "openai-community/gpt2"): only these make "X" and "ORG/X" one model; any other "ORG/gpt2" is a fine-tune
CANONICAL_ORGS = frozenset({"openai-community", "google-bert", "google-t5", "FacebookAI", "distilbert"})


def official_model_name(name: str) -> str | None:
    """TransformerLens's official (hub) name for a model name or alias ('gpt2-small' -> 'gpt2',
    'pythia-70m-deduped' -> 'EleutherAI/pythia-70m-deduped'); None when it does not know the name."""
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # ValueError for an unknown name, a local path; any failure: no mapping
        return None


def split_revision(spec: str) -> tuple[str, str | None]:
    """(hub name, revision) of a hub model as `--model` names it: `NAME@REVISION` (a branch, tag or
    commit); without `@`, the default branch (None). The one place `NAME@REVISION` is taken apart."""
    name, _, revision = spec.partition("@")
    return name, revision or None


def bridge_hub_name(name: str) -> str:
    """The hub repo TransformerBridge loads for `name`: it still maps TransformerLens's old aliases
    ('gpt2-small', 'gemma-2-2b', 'qwen3-0.6b', 'pythia-70m-deduped', which SAELens configs name) to
    official repos, some of which HookedTransformer's table (`official_model_name`) does not know."""
    try:
        from transformer_lens.model_bridge.sources.transformers import MODEL_ALIASES
    except ImportError:  # a TransformerLens without the Bridge's table: no mapping
        return name
    return next((official for official, aliases in MODEL_ALIASES.items() if name in aliases), name)


def same_model_name(a: str, b: str) -> bool:
    """Whether two model names (TransformerLens aliases or hub names) name one model: equal official
    names, or a legacy name and its moved copy under one of `CANONICAL_ORGS`."""
    if a == b:  # without TransformerLens's name table, whose import takes seconds (train --init-from checks early)
        return True
    a, b = (official_model_name(a) or a).lower(), (official_model_name(b) or b).lower()
    if a == b:
        return True
    bare, full = (a, b) if "/" not in a else (b, a)
    org, _, rest = full.partition("/")
    return "/" not in bare and rest == bare and org in {o.lower() for o in CANONICAL_ORGS}


def same_model(a: ModelIdentity, b: ModelIdentity) -> bool:
    """Whether two identities name the same weights, as far as their records tell.

    Toy and local models compare by the SHA-256 of their weight files (a directory copied
    elsewhere is the same model); hub models by name and commit (an unknown revision, or a branch or
    tag name against a commit, matches any); models built in code by the hash of their parameters."""
    if a.d_model is not None and b.d_model is not None and a.d_model != b.d_model:
        return False
    if a.weights != b.weights:
        return False
    if a.source in _FILE_HASHED and b.source in _FILE_HASHED:
        if a.weights_sha256 and b.weights_sha256:
            return _same_hash(a.weights_sha256, b.weights_sha256)
        return a.source == b.source and a.name == b.name and (a.path is None or b.path is None or a.path == b.path)
    if a.source != b.source:
        return False
    if a.source == "hub":
        if a.name != b.name and bridge_hub_name(a.name) != bridge_hub_name(b.name):  # older records: the alias
            return False
        if a.revision and b.revision:
            if _is_commit(a.revision) != _is_commit(b.revision):
                return True  # a branch or tag name (a record from before commits were resolved) vs a commit
            n = min(len(a.revision), len(b.revision))
            return a.revision[:n] == b.revision[:n] if n >= 7 else a.revision == b.revision
        return True
    if a.weights_sha256 and b.weights_sha256:
        return _same_hash(a.weights_sha256, b.weights_sha256)
    return a.name == b.name


def _is_commit(revision: str) -> bool:
    """A (possibly short) commit hash, not a branch or tag name such as 'main' or 'step3000'."""
    return re.fullmatch(r"[0-9a-f]{7,40}", revision) is not None


def check_same_model(
    recorded: ModelIdentity | None,
    given: ModelIdentity | None,
    *,
    recorded_in: str,
    given_as: str,
    override: str,
    fix: str = "use the recorded model",
) -> None:
    """Raise `ModelMismatchError` naming both identities and `override` when `given` is not the
    model `recorded_in` was made with. Nothing to compare (either side unknown) passes."""
    if recorded is None or given is None or same_model(recorded, given):
        return
    if recorded.weights != given.weights and same_model(replace(recorded, weights=given.weights), given):
        how = {"processed": "with TransformerLens's weight processing (fold_ln, centred weights, folded value "
                            "biases: --process-weights)", "raw": "with its raw weights (no --process-weights)"}
        raise ModelMismatchError(
            f"{recorded_in} was made with model {recorded.id} loaded {how[recorded.weights]}, but {given_as} was "
            f"loaded {how[given.weights]}; the activations differ. Load it as recorded, or pass {override} to use "
            f"this one anyway")
    if recorded.path and recorded.path == given.path and recorded.weights_sha256 and given.weights_sha256:
        raise ModelMismatchError(
            f"the model files in {given.path} changed since {recorded_in} was made (weights sha256 "
            f"{recorded.weights_sha256[:_SHORT_HASH]} then, {given.weights_sha256[:_SHORT_HASH]} now); restore them, "
            f"or pass {override} to use the changed model anyway")
    raise ModelMismatchError(
        f"{recorded_in} was made with model {recorded.describe()}, but {given_as} is {given.describe()}; "
        f"{fix}, or pass {override} to use this one anyway")


# ---------------------------------------------------------------------------------------------
# where identities are kept on objects

def attach_identity(model: Any, identity: ModelIdentity) -> None:
    """Record on a loaded model who it is (`saesteer.models.load_model` does this)."""
    setattr(model, MODEL_ATTR, identity)


def identity_of_model(model: Any) -> ModelIdentity | None:
    """The identity `attach_identity` put on `model`; None for a model loaded some other way."""
    ident = getattr(model, MODEL_ATTR, None)
    return ident if isinstance(ident, ModelIdentity) else None


def identity_of_sae(loaded: Any) -> ModelIdentity | None:
    """The model an SAE was trained on, from the provenance loaded beside it (a
    `saes.formats.LoadedSAE`, or the provenance dict itself): `model_identity`, or the `model` id
    and `model_revision` older versions wrote; None without a record (e.g. an SAE made by another
    library: its `cfg.json` names models in that library's own terms).

    A bare SAE module is refused (TypeError): its provenance travels beside it, never on it, so
    asking it would silently answer "no record". Code that takes either uses `recorded_model_of`."""
    base = sys.modules.get("saes.base")  # an SAE exists only once saes.base is imported
    if base is not None and isinstance(loaded, base.SAE):
        raise TypeError("identity_of_sae reads the provenance loaded beside an SAE, and a bare SAE carries none: "
                        "pass the LoadedSAE saes.formats.resolve_sae returns, or saes.read_provenance(folder)")
    prov = loaded if isinstance(loaded, Mapping) else getattr(loaded, "provenance", None)
    prov = prov if isinstance(prov, Mapping) else {}
    if prov.get("model_identity") is not None:
        return ModelIdentity.from_json(prov["model_identity"])
    data = prov.get("data") or {}
    return ModelIdentity.from_id(prov.get("model"), data.get("model_revision") or prov.get("model_revision"))


def recorded_model_of(sae: Any) -> ModelIdentity | None:
    """For Python APIs that take an SAE or a `LoadedSAE`: the model the latter records; None for a
    bare SAE (nothing recorded with it)."""
    base = sys.modules.get("saes.base")
    if base is not None and isinstance(sae, base.SAE):
        return None
    return identity_of_sae(sae)


def check_named_model(sae: Any, given: ModelIdentity | None, *, sae_as: str, given_as: str, override: str,
                      fix: str) -> None:
    """An SAE from another library records no model identity, but its config names the model in that
    library's terms (SAELens's `model_name`: a registry release's 'gpt2-small', Gemma Scope 2's
    'google/gemma-3-270m', or the local checkpoint directory it loaded): refuse (ModelMismatchError) another
    model, naming both and `override`. Hub names are compared by name, an HF-cache snapshot directory
    (`.../models--ORG--NAME/snapshots/COMMIT`) as its repo's name; a local checkpoint directory that exists
    here by its weight files (a copy elsewhere is the same model). A relative path, or a directory not on this
    machine, cannot be compared with a local model. An SAE with an identity is `check_same_model`'s."""
    if given is None or given.source not in ("hub", "local") or recorded_model_of(sae) is not None:
        return
    metadata = getattr(getattr(getattr(sae, "sae", sae), "cfg", None), "metadata", None) or {}
    named = metadata.get("model_name")
    if not isinstance(named, str) or not named or ModelIdentity.from_id(named) is not None:
        return
    from saes.model_files import hub_snapshot_repo

    named_repo = hub_snapshot_repo(named) if _is_path(named) else named
    given_repo = given.name if given.source == "hub" else hub_snapshot_repo(given.path or "")
    if given.source == "local" and not (named_repo and given_repo):
        _check_named_directory(named, given, sae_as=sae_as, given_as=given_as, override=override, fix=fix)
        return
    if named_repo and (same_model_name(named_repo, given_repo) or bridge_hub_name(named_repo) == given_repo):
        return
    if named_repo not in (None, named):  # an HF-cache snapshot directory
        hub = f" (a snapshot of {named_repo})"
    else:
        hub = official_model_name(named) if named_repo else None
        hub = f" (HF: {hub})" if hub not in (None, named) else ""
    given_named = given.name if given.source == "hub" else f"the model at {given.path}"
    raise ModelMismatchError(f"{sae_as} was made for the model {named!r}{hub}, not {given_named} ({given_as}); "
                             f"{fix}, or pass {override} to use this one anyway")


def _is_path(name: str) -> bool:
    """A model name that is a directory's path (absolute, or './', '../', '~'), not a hub name."""
    import os

    return os.path.isabs(os.path.expanduser(name)) or name.startswith(("./", "../"))


def _check_named_directory(named: str, given: ModelIdentity, *, sae_as: str, given_as: str, override: str,
                           fix: str) -> None:
    """`check_named_model` for a local model: `named` an existing absolute checkpoint directory whose weight
    files differ from the given one's (a copy of the same files elsewhere, a link to it: the same model)."""
    import os

    from saes.model_files import local_weights_sha256

    if not os.path.isabs(os.path.expanduser(named)) or not given.path:
        return
    there = os.path.realpath(os.path.expanduser(named))
    if not os.path.isfile(os.path.join(there, "config.json")) or there == os.path.realpath(given.path):
        return
    theirs, ours = local_weights_sha256(there), given.weights_sha256
    if theirs is None or ours is None or _same_hash(theirs, ours):
        return
    raise ModelMismatchError(f"{sae_as} was made for the model at {named}, whose weight files differ from those of "
                             f"the model at {given.path} ({given_as}); {fix}, or pass {override} to use this one "
                             f"anyway")


def check_sae_model(model: Any, sae: Any, *, sae_name: str = "sae", allow_mismatch: bool = False) -> None:
    """Python-API check for code that pairs a model with an SAE: refuse (ModelMismatchError) an
    SAE recorded for another model when both sides carry an identity (`sae`: a `LoadedSAE`
    carries its record; a bare SAE has none), or a model loaded with other weight processing than
    the SAE's SAELens `model_from_pretrained_kwargs` ask for (`saes.processing`)."""
    if allow_mismatch:
        return
    check_same_model(recorded_model_of(sae), identity_of_model(model), recorded_in=f"SAE {sae_name!r}",
                     given_as="the model given", override="allow_model_mismatch=True",
                     fix="load the model it records (saesteer.models.load_model)")
    check_named_model(sae, identity_of_model(model), sae_as=f"SAE {sae_name!r}", given_as="the model given",
                      override="allow_model_mismatch=True", fix="load the model it names (saesteer.models.load_model)")
    from saes.processing import APPLIED_ATTR, check_processing, processing_seen  # it imports this module

    ident, applied, seen = identity_of_model(model), getattr(model, APPLIED_ATTR, None), None
    if ident is None and (seen := processing_seen(model)) is not None:  # a model loaded some other way
        ident, applied = seen
    fix = functools.partial(_how_to_load, model=model, own_call=seen is not None)
    check_processing(sae, ident, sae_name=sae_name, model_as="the model given",
                     override="allow_model_mismatch=True", model_cfg=getattr(model, "cfg", None),
                     applied=applied, fix=fix)


def _how_to_load(wanted: bool, *, model: Any, own_call: bool) -> str:
    """How to get a model loaded with (`wanted`) or without TransformerLens's weight processing: with
    saesteer's loader, and for a model the user loaded themselves (`own_call`) also the TransformerLens
    call that does it for their model's class."""
    ours = f"saesteer.models.load_model(..., process_weights={wanted})"
    if not own_call:
        return f"load the model with {ours}"
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(model, TransformerBridge):
        theirs = ("call model.enable_compatibility_mode() on the bridge" if wanted else
                  "boot the bridge again without enable_compatibility_mode()")
    else:
        call = "from_pretrained" if wanted else "from_pretrained_no_processing"
        theirs = f"load the model with HookedTransformer.{call}(...)"
    return f"{theirs}, or load it with {ours}"

