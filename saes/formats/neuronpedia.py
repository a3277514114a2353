"""Neuronpedia's names for SAEs and latents, resolved through SAELens's registry.

A researcher browsing Neuronpedia copies a latent's page address or its id:

    https://www.neuronpedia.org/gpt2-small/6-res-jb/1234      a latent (model id / SAE id / index)
    gpt2-small/6-res-jb/1234                                  the same, as an id
    gpt2-small/6-res-jb  (or its page address)                the SAE

SAELens's `pretrained_saes.yaml` gives each registry SAE its Neuronpedia id (`neuronpedia:` of a
release's entry, read by `get_pretrained_saes_directory()` into `PretrainedSAELookup.neuronpedia_id`),
so an id maps to exactly one `sae_lens:RELEASE/SAE_ID`, which `sae_lens_registry` loads. An id the
registry does not know is refused naming the closest ones it does.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from saes.errors import SaesteerError
from saes.io import SAEFormatError

SITE = "https://www.neuronpedia.org"
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# the site's part of an address (also as pathlib leaves it: "https:/www...")
_SITE = r"(?:https?:/+)?(?:www\.)?neuronpedia\.org/"
# the address, or a bare id; the latent index optional
_REF = re.compile(rf"^(?P<site>{_SITE})?(?P<model>{_PART})/(?P<sae>{_PART})(?:/(?P<index>\d+))?/?$")
# a latent at the head of an edit (`URL:clamp=4`, `gpt2-small/6-res-jb/17:add=2@generated`) or of a
# trigger (`gpt2-small/6-res-jb/77>1.5`)
_LATENT_HEAD = re.compile(rf"^\s*(?P<site>{_SITE})?(?P<model>{_PART})/(?P<sae>{_PART})/(?P<index>\d+)"
                          rf"(?=\s*(?::|@|\?|>|$))")
# a latent's index as text (ASCII digits, as int() reads them)
_INDEX = re.compile(r"\s*-?[0-9]+\s*")
# an edit's own SAE name (`res/17:...`), where its head is no Neuronpedia latent
_NAMED_HEAD = re.compile(r"^\s*(?P<name>[^/:@\s]+)/\d")


@dataclass(frozen=True)
class NeuronpediaRef:
    model_id: str  # Neuronpedia's model id, e.g. "gpt2-small" (TransformerLens's name)
    sae_id: str  # Neuronpedia's SAE ("source") id, e.g. "6-res-jb"
    index: int | None = None  # the latent, when the reference names one
    address: bool = False  # given as a neuronpedia.org address (then it cannot be anything else)

    @property
    def id(self) -> str:
        return f"{self.model_id}/{self.sae_id}"


def parse_ref(text: str) -> NeuronpediaRef | None:
    """The Neuronpedia reference `text` spells, or None when it is not in that form (a bare
    'a/b' may still be a local path: callers check the registry with `registry_ref`)."""
    text = str(text).strip()
    if "neuronpedia.org/" in text:  # an address copied with its query or fragment (?embed=true, #...)
        text = text.split("?", 1)[0].split("#", 1)[0]
    m = _REF.match(text)
    if m is None:
        return None
    return NeuronpediaRef(m["model"], m["sae"], int(m["index"]) if m["index"] else None, bool(m["site"]))


def edit_sae_name(text: str) -> str | None:
    """The SAE name an edit's text starts with (`res/17:...`), where its head is no Neuronpedia latent."""
    if split_latent_head(text) is not None:
        return None
    m = _NAMED_HEAD.match(text)
    return m["name"] if m else None


def split_latent_head(text: str) -> tuple[NeuronpediaRef, str] | None:
    """(the latent, the rest) when an edit's or a trigger's text starts with a Neuronpedia latent
    (`gpt2-small/6-res-jb/17:clamp=4`, `gpt2-small/6-res-jb/77>1.5`, or the latent's address); None otherwise."""
    m = _LATENT_HEAD.match(text)
    if m is None:
        return None
    return NeuronpediaRef(m["model"], m["sae"], int(m["index"]), bool(m["site"])), text[m.end():]


@cache
def registry_ids() -> dict[str, list[tuple[str, str]]]:
    """Neuronpedia id -> the (release, sae_id) entries that give it, from the installed SAELens's
    registry (one each today; two would make the id ambiguous, and `registry_ref` refuses it)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    out: dict[str, list[tuple[str, str]]] = {}
    for release, lookup in get_pretrained_saes_directory().items():
        for sae_id, np_id in (lookup.neuronpedia_id or {}).items():
            if np_id:
                out.setdefault(str(np_id), []).append((release, sae_id))
    return out


def neuronpedia_id_of(release: str, sae_id: str) -> str | None:
    """The Neuronpedia id SAELens's registry gives `release`/`sae_id` (None when it gives none)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory().get(release)
    return (lookup.neuronpedia_id or {}).get(sae_id) if lookup is not None else None


def neuronpedia_id_of_spec(spec: str) -> str | None:
    """The Neuronpedia id of an SAE given as a Neuronpedia reference, `sae_lens:RELEASE/SAE_ID` or a
    Gemma Scope params.npz in Google's layout (None for anything else: a folder, even one named like
    an id, or a registry SAE Neuronpedia does not host)."""
    from saes.formats import sae_lens_registry

    text = str(spec)
    if text.startswith(sae_lens_registry.PREFIX):
        release, _, sae_id = text[len(sae_lens_registry.PREFIX):].partition("/")
        return neuronpedia_id_of(release, sae_id)
    if Path(text).expanduser().exists():  # a local folder wins, as in resolve_sae
        from saes.formats import gemma_scope  # a Gemma Scope params.npz: its place in Google's repos names it

        return gemma_scope.neuronpedia_id_of_path(Path(text).expanduser())
    ref = parse_ref(text)
    return ref.id if ref is not None and ref.id in registry_ids() else None


def closest(np_id: str, n: int = 3) -> list[str]:
    """The registry's Neuronpedia ids nearest `np_id` (same model first)."""
    known = registry_ids()
    model = np_id.split("/")[0]
    pool = [k for k in known if k.split("/")[0] == model] or list(known)
    return difflib.get_close_matches(np_id, pool, n=n, cutoff=0.0)


def unknown_id_error(np_id: str) -> SAEFormatError:
    import importlib.metadata

    try:
        version = importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - sae-lens is a dependency
        version = "?"
    near = closest(np_id)
    return SAEFormatError(f"Neuronpedia SAE {np_id!r} is not in SAELens's registry (sae_lens {version}); closest known: "
                          f"{', '.join(near)}" + ("" if any(n.split('/')[0] == np_id.split('/')[0] for n in near)
                                                    else f" (no SAE of model {np_id.split('/')[0]!r} is known)"))


def registry_ref(text: str) -> tuple[str, str] | None:
    """(release, sae_id) of a Neuronpedia reference (an address, or an id the registry knows);
    None when `text` is no Neuronpedia reference. An address, or an id of a model the registry
    knows, that names an unknown SAE is refused naming the closest known ids."""
    ref = parse_ref(text)
    if ref is None:
        return None
    known = registry_ids()
    if ref.id in known:
        if len(known[ref.id]) > 1:
            from saes.formats import sae_lens_registry

            named = ", ".join(f"{sae_lens_registry.PREFIX}{r}/{i}" for r, i in known[ref.id])
            raise SAEFormatError(f"Neuronpedia SAE {ref.id!r} is given by several entries of SAELens's registry "
                                 f"({named}); pass the one you mean")
        return known[ref.id][0]
    if ref.address or any(k.split("/")[0] == ref.model_id for k in known):
        raise unknown_id_error(ref.id)
    return None


def registry_spec(text: str) -> str | None:
    """`sae_lens:RELEASE/SAE_ID` of a Neuronpedia reference (see `registry_ref`), else None."""
    from saes.formats import sae_lens_registry

    found = registry_ref(text)
    return None if found is None else f"{sae_lens_registry.PREFIX}{found[0]}/{found[1]}"


class LatentRefError(SaesteerError, ValueError):
    """A Neuronpedia latent named where its SAE is not the one (or one of those) given."""


class LatentOwners:
    """The one resolver of Neuronpedia latents (`gpt2-small/6-res-jb/17`, or its page address) into
    the SAEs at hand, wherever a latent is named: a bare latent, an edit (its latent and its
    trigger's) and a trigger, written back in saesteer's terms (`[NAME/]17`, `NAME` the SAE's key).

    `ids`: a function giving the name of each SAE given -> its Neuronpedia id (None: not on
    Neuronpedia), asked only when a Neuronpedia latent appears (it may read SAELens's registry or a
    store). `named`: write `NAME/` before an edit's latent (several SAEs are given). `whose`, `fix`
    and `sides` (a function saying what the SAEs given are; default: each name and its id) word a
    refusal for the face that asks ('a --sae given', 'pass --sae {id}')."""

    def __init__(self, ids: Callable[[], Mapping[str, str | None]], *, named: bool = False,
                 whose: str = "a --sae given", fix: str = "pass --sae {id}",
                 sides: Callable[[], str] | None = None) -> None:
        self._ids, self.named, self.whose, self.fix, self._sides = ids, named, whose, fix, sides

    @cached_property
    def ids(self) -> Mapping[str, str | None]:
        return dict(self._ids())

    def owner(self, ref: NeuronpediaRef, text: str) -> str:
        """The name of the SAE whose Neuronpedia id `ref` names; refused naming both sides."""
        names = [name for name, np_id in self.ids.items() if np_id == ref.id]
        if names:
            return names[0]
        sides = self._sides() if self._sides else ", ".join(f"{name!r} is {np_id or 'not on Neuronpedia'}"
                                                            for name, np_id in self.ids.items())
        raise LatentRefError(f"{text.strip()}: latent {ref.index} of the Neuronpedia SAE {ref.id!r} is not of {self.whose} "
                             f"({sides}); {self.fix.format(id=ref.id)}")

    def latent(self, text: str | int) -> tuple[str | None, int]:
        """(the SAE's name, the index) of a latent given as its index (no name) or as a Neuronpedia latent."""
        if isinstance(text, int) or _INDEX.fullmatch(str(text)):  # not str.isdigit: '²' and '--3' are no int
            return None, int(text)
        ref = parse_ref(str(text))
        if ref is None or ref.index is None:
            raise LatentRefError(f"{text!r} is not a latent: give its index, or a Neuronpedia latent such as "
                                 f"gpt2-small/6-res-jb/17 (or its page address)")
        return self.owner(ref, str(text)), ref.index

    def edit(self, text: str) -> str:
        """An edit's text with its latent and its trigger's in saesteer's terms (the rest as it is);
        a trigger latent of another SAE than the edited one is refused (a trigger reads the edited SAE)."""
        name = None
        head = split_latent_head(text)
        if head is not None:
            ref, rest = head
            name = self.owner(ref, text)
            text = f"{name + '/' if self.named else ''}{ref.index}{rest}"
        edit, sep, trigger = text.partition("?")
        found = split_latent_head(trigger) if sep else None
        if found is None:
            return text
        ref, rest = found
        trigger_sae = self.owner(ref, f"?{trigger}")
        if name is None:
            name = edit_sae_name(edit) or (next(iter(self.ids)) if len(self.ids) == 1 else None)
        if name is not None and name in self.ids and self.ids[name] != self.ids[trigger_sae]:
            raise LatentRefError(f"{text.strip()}: the trigger latent {ref.index} is of the Neuronpedia SAE {ref.id!r}, the "
                                 f"edited latent of {self.ids[name] or 'an SAE not on Neuronpedia'} ({name!r}); a trigger "
                                 f"reads the SAE it edits: give a latent of that SAE")
        return f"{edit}?{ref.index}{rest}"

    def trigger(self, text: str) -> str:
        """A trigger's text (`LATENT>THRESHOLD[x]`) with a Neuronpedia latent as its index."""
        found = split_latent_head(text)
        if found is None:
            return text
        ref, rest = found
        self.owner(ref, text)
        return f"{ref.index}{rest}"


def sae_of_latents(texts: Sequence[str]) -> str | None:
    """The address of the one Neuronpedia SAE that every edit or latent in `texts` names (their
    latents' and triggers'), or None when one names none or they name several: a command given no
    SAE takes it from there."""
    ids = set()
    for text in texts:
        heads = [split_latent_head(part) for part in str(text).split("?", 1)]
        if heads[0] is None:
            return None
        ids |= {head[0].id for head in heads if head is not None}
    return f"{SITE}/{ids.pop()}" if len(ids) == 1 else None
