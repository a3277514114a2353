"""A loaded model's hook points: the one check of a hook name, and where the model lives.

The model is anything with TransformerLens's `hook_dict` (a `HookedTransformer`, or a
`TransformerBridge` for HF checkpoints). Their `hooks()` / `run_with_hooks` ignore an unknown
name silently, so every stage checks names here first: an unknown one is an `UnknownHookError`
that lists close matches and the model's hook points.

    check_hook(model, "blocks.1.hook_resid_post", who="SAE 'l1'")
    check_hooks(model, hooks, per_token=True)     # the activation cache: one vector per token
    with opt_in_hooks(model, hooks): ...          # opt-in hook points (hook_mlp_in, ...) on for the block
    pin = OptInPin(model, {"store 'a'": hooks}); pin.hold()  # a server: on while it serves, no request switches one
    pin.release()                                 # ... when it stops
    transcoder_target(sae)                        # the hook a transcoder predicts (check_transcoder_hooks: the pair)
    model_device(model), model_dtype(model)       # where its weights live
"""

from __future__ import annotations

import difflib
import re
import threading
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from saes.errors import SaesteerError

# hook points whose activation has one value per pair of positions, not one vector per token
NOT_PER_TOKEN = ("hook_attn_scores", "hook_pattern")


class UnknownHookError(SaesteerError, ValueError):
    """A hook point the model does not have (or that a stage cannot use); the message lists valid ones."""


def hook_names(model: Any) -> list[str]:
    """The model's hook point names (an error for a model without hook points)."""
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None:
        raise UnknownHookError(f"{type(model).__name__} has no hook points (hook_dict); pass a TransformerLens "
                               f"HookedTransformer, or an HF model loaded through saesteer (a TransformerBridge)")
    return list(hook_dict)


def per_token_hooks(model: Any) -> list[str]:
    """Hook points whose activation has one vector per token (attention patterns/scores left out)."""
    return [n for n in hook_names(model) if not n.endswith(NOT_PER_TOKEN)]


def describe_hooks(names: Iterable[str]) -> str:
    """Hook names folded by layer: `blocks.{0..11}.hook_resid_post, hook_embed, ...`."""
    groups: dict[str, list[int]] = {}
    for n in names:
        m = re.match(r"^blocks\.(\d+)\.(.*)$", n)
        key, layer = (f"blocks.{{i}}.{m.group(2)}", int(m.group(1))) if m else (n, -1)
        groups.setdefault(key, []).append(layer)
    out = []
    for key, layers in groups.items():
        layers = sorted(l for l in layers if l >= 0)
        if not layers:
            out.append(key)
            continue
        contiguous = layers == list(range(layers[0], layers[-1] + 1))
        span = f"{layers[0]}..{layers[-1]}" if contiguous else ",".join(map(str, layers))
        out.append(key.replace("{i}", "{" + span + "}"))
    return ", ".join(out)


def _module_output_hook_on(model: Any, hook: str) -> str:
    """`hook`, derived from what an HF module outputs (`saes.formats.base.tl_hook_for_module`), as this model
    names that tensor: `blocks.N.hook_mlp_out` / `hook_attn_out` is the MLP's / attention's output only where
    the Bridge's block aliases it so (not on Gemma 2/3, OLMo 2, Granite, whose blocks norm or scale it first:
    there `blocks.N.mlp.hook_out` / `attn.hook_out`)."""
    from saes.formats.base import module_output_hook_given

    m = re.match(r"^blocks\.(\d+)\.", hook)
    blocks = getattr(model, "blocks", None)
    block = int(m[1]) if m else -1
    aliases = getattr(blocks[block], "hook_aliases", None) if blocks is not None and 0 <= block < len(blocks) else None
    return module_output_hook_given(hook, aliases)


def check_hook(model: Any, name: str, who: str | None = None, *, per_token: bool = False) -> str:
    """`name` if the model has that hook point, else an `UnknownHookError` saying so (prefixed with
    `who`, the thing that asked for it) with close matches and the valid names. Changes nothing: an
    opt-in hook point (`hook_mlp_in`, ...) is valid, and whoever runs the model there switches it on
    for that run (`opt_in_hooks`).
    `per_token`: also refuse hooks with one value per pair of positions (attention patterns)."""
    known = hook_names(model)
    valid = per_token_hooks(model) if per_token else known
    where = f"{who}: " if who else ""
    if name in valid:
        _refuse_whole_block_alias(model, name, where)
        return name
    if name in known:
        raise UnknownHookError(f"{where}hook point {name!r} is not per-token (it has one value per pair of "
                               f"positions); use a per-token hook instead")
    mid = _RESID_MID.match(name)
    if mid and getattr(getattr(model, "cfg", None), "parallel_attn_mlp", False):
        raise UnknownHookError(
            f"{where}hook point {name!r} does not exist on this model: its attention and MLP run in parallel on "
            f"the same input (as GPT-J's, Pythia's, Phi-2's), so no residual stream lies between them; use "
            f"blocks.{mid.group(1)}.hook_resid_pre (their input) or blocks.{mid.group(1)}.hook_resid_post")
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    from saes.formats.base import tl_hook_for_module

    hook = tl_hook_for_module(name)
    if hook:  # an HF module name (people type them instead of hook points): its output is a hook point
        hook = _module_output_hook_on(model, hook)
        if hook in valid and name.startswith("blocks."):  # TransformerLens's own module name, not HF's
            hint = f" {name} is a module, not a hook point: its output is {hook}."
        elif hook in valid:
            hint = (f" Hook points are named as TransformerLens names them: the output of the HF module {name} "
                    f"is {hook}.")
    # TransformerBridge adds an input and an output hook to every submodule (attn.q.hook_in, ...):
    # named by count, so that the hook points people use stay readable
    wrappers = [n for n in valid if n.endswith((".hook_in", ".hook_out"))]
    named, more = list(valid), ""
    if wrappers and len(wrappers) < len(valid):
        named = [n for n in valid if n not in set(wrappers)]
        example = next((g for g in describe_hooks(wrappers).split(", ") if g.startswith("blocks.")), wrappers[0])
        more = f" (and {len(wrappers)} input/output hooks of its modules, such as {example})"
    raise UnknownHookError(f"{where}unknown hook point {name!r}.{hint} Valid hook points for this model: "
                           f"{describe_hooks(named)}{more}")


_RESID_MID = re.compile(r"^blocks\.(\d+)\.hook_resid_mid$")
_MLP_HIDDEN = re.compile(r"^(blocks\.(\d+)\.mlp)\.hook_(pre|post)$")


def _refuse_whole_block_alias(model: Any, name: str, where: str) -> None:
    """A TransformerBridge names the input and output of a mixture-of-experts block (Mixtral, Qwen3-MoE, gpt-oss,
    OLMoE, DeepSeek, Jamba: no single hidden layer of neurons) `mlp.hook_pre` and `mlp.hook_post`, the names of
    an MLP's hidden activations elsewhere: an SAE asked for on the neurons would read the block's output."""
    m = _MLP_HIDDEN.match(name)
    if m is None:
        return
    hook_dict = model.hook_dict
    block, layer, which = m.groups()
    end = {"pre": "hook_in", "post": "hook_out"}[which]
    if hook_dict[name] is not hook_dict.get(f"{block}.{end}"):
        return  # a dense MLP (or a dense layer of an interleaved MoE stack): its neurons
    # the hook holding exactly what the alias held: not ln2.hook_normalized (taken before the norm's gain, and on a
    # post-norm block, FlexOlmo, the MLP's output normed), nor hook_mlp_out where the block scales or norms the
    # MLP's output first (Granite-MoE, FlexOlmo)
    part = "output" if which == "post" else "input"
    use = _module_output_hook_on(model, f"blocks.{layer}.hook_mlp_out") if which == "post" else f"{block}.hook_in"
    raise UnknownHookError(
        f"{where}hook point {name!r} is not an MLP's hidden activation on this model: its MLP is a mixture of "
        f"experts with no single layer of neurons, and TransformerLens gives that name to the whole block's {part}; "
        f"use {use} for the block's {part}")


class NotEditableHookError(UnknownHookError):
    """A hook point that can be read but not edited as its name says (`check_editable_hook`)."""


def check_editable_hook(model: Any, name: str, who: str | None = None) -> str:
    """`check_hook`, and refuse a hook whose edit would not be what its name says: on a
    TransformerBridge `blocks.L.hook_resid_mid` is an alias of the MLP norm's input (`ln2.hook_in`),
    so a changed value reaches the MLP but not the residual stream that goes on to the next block.
    Reading it (cache, train, features) is right; steering or splicing there is refused."""
    check_hook(model, name, who)
    canonical = getattr(model.hook_dict[name], "name", name) or name
    if name.endswith("hook_resid_mid") and canonical != name and canonical.endswith(".hook_in"):
        where = f"{who}: " if who else ""
        raise NotEditableHookError(
            f"{where}on this model {name} is the input of one module ({canonical}): an edit there would reach "
            f"that module but not the residual stream after it, so it is not an edit of {name}. Steer or "
            f"splice with an SAE of a hook that is the residual stream here (hook_resid_pre, hook_resid_post)")
    return name


# TransformerLens's opt-in hook points: (name suffixes, the cfg flag that must be on for them to fire)
_OPT_IN = ((("attn.hook_result",), "use_attn_result"), (("hook_q_input", "hook_k_input", "hook_v_input"),
           "use_split_qkv_input"), (("mlp_in",), "use_hook_mlp_in"), (("attn_in",), "use_attn_in"))


class OptInConflictError(UnknownHookError):
    """An opt-in hook point whose flag cannot be on together with one already on (TransformerLens:
    `use_attn_in` and `use_split_qkv_input` exclude each other)."""


# Who holds each opt-in flag (`OptInSwitch`): (id(model), flag) -> number of open holders. An entry
# exists from the holder that switched the flag on until the last holder is done, which switches it
# off; a flag that was on before its first holder has none and is never switched off here. Holders
# keep their model alive, so its id stays its own while an entry names it.
_HOLDERS: dict[tuple[int, str], int] = {}
# models a server shares between requests (`OptInPin`): id(model) -> who pinned it, one per open pin
_PINNED: dict[int, list[str]] = {}
# servers' engines and Python sessions switch from several threads; reentrant, as an app's
# finalizer (a `release`) may run from the garbage collector inside a switch
_LOCK = threading.RLock()


def _flag_of(model: Any, name: str) -> str | None:
    """The cfg flag that must be on for the opt-in hook point `name` to fire (on now or not); None
    for a hook point that fires whatever the flags (or a model without them)."""
    cfg = getattr(model, "cfg", None)
    for suffixes, flag in _OPT_IN:
        if name.endswith(suffixes) and isinstance(getattr(cfg, flag, None), bool):
            return flag
    return None


def opt_in_flag(model: Any, name: str) -> str | None:
    """The cfg flag (`use_attn_in`, ...) that is off on `model` and must be on for the opt-in hook
    point `name` to fire; None when `name` fires as the model stands."""
    flag = _flag_of(model, name)
    return flag if flag is not None and getattr(model.cfg, flag) is False else None


def opt_in_flags_during(model: Any, names: Iterable[str]) -> frozenset[str]:
    """The opt-in flags on while work at the hook points `names` runs (`opt_in_hooks`): those on now
    and those the names need. Values read at one hook can differ in the last float bits with other
    flags on (another forward path), so whoever reuses a reading compares these."""
    cfg = getattr(model, "cfg", None)
    on = {flag for _, flag in _OPT_IN if getattr(cfg, flag, None) is True}
    return frozenset(on | {f for f in (_flag_of(model, n) for n in names) if f is not None})


class OptInSwitch:
    """TransformerLens's opt-in hook points switched on for one piece of work and off again after.

    They are listed among the model's hook points, but fire only once a cfg flag is on
    (`model.set_use_attn_in(True)`, ...), and a flag on changes the model for everyone using it
    (another forward path: slower, other float rounding; `use_attn_in` and `use_split_qkv_input`
    exclude each other). So a flag is on only while some work that reads or edits its hook points
    holds it (`need`): each piece of work is one holder, counted per model and flag across threads,
    and the last holder's `restore` switches it off (a flag on before its first holder stays on).
    A model pinned by a server (`OptInPin`) gets no flag switched on: a hook needing one that is off
    there is refused."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.held: list[str] = []  # the flags this object holds, in order

    def need(self, names: str | Iterable[str], who: str | None = None) -> None:
        """Hold the flags the hook points `names` need, switching on those off (an `UnknownHookError`
        when one cannot be). A flag this object holds already is held once."""
        for name in [names] if isinstance(names, str) else names:
            flag = _flag_of(self.model, name)
            if flag is None or flag in self.held:
                continue
            where = f"{who}: " if who else ""
            key = (id(self.model), flag)
            with _LOCK:
                if key in _HOLDERS:
                    _HOLDERS[key] += 1
                elif getattr(self.model.cfg, flag):
                    continue  # on before any holder: left as it was found
                else:
                    pinned = _PINNED.get(id(self.model))
                    if pinned:
                        raise UnknownHookError(
                            f"{where}{name} needs TransformerLens's {flag}, which is off on the model {pinned[-1]} "
                            f"shares: a server switches opt-in hook points on only at start, for the SAEs it serves, "
                            f"so that one request cannot change the model for the others; serve a store whose SAE "
                            f"reads {name}")
                    self._switch_on(flag, name, where)
                    _HOLDERS[key] = 1
            self.held.append(flag)

    def restore(self) -> None:
        """Let go of the flags `need` held (last first); a flag whose last holder this was goes off."""
        with _LOCK:
            while self.held:
                flag = self.held.pop()
                key = (id(self.model), flag)
                _HOLDERS[key] -= 1
                if _HOLDERS[key] == 0:
                    del _HOLDERS[key]
                    getattr(self.model, f"set_{flag}")(False)

    def _switch_on(self, flag: str, name: str, where: str) -> None:
        setter = getattr(self.model, f"set_{flag}", None)
        if setter is None:
            raise UnknownHookError(f"{where}{name} needs TransformerLens's {flag}, which this model cannot switch on")
        try:
            setter(True)
        except ValueError:  # TransformerBridge: use_attn_in and use_split_qkv_input exclude each other
            raise OptInConflictError(f"{where}{name} needs TransformerLens's {flag}, which cannot be on together with "
                                     f"the hook points already in use on this model (hook_attn_in and "
                                     f"hook_q/k/v_input exclude each other); use them in separate runs") from None
        except (AssertionError, NotImplementedError) as e:  # e.g. hook_attn_in with grouped-query attention
            raise UnknownHookError(f"{where}{name} needs TransformerLens's {flag}, which this model cannot switch on "
                                   f"({e})") from None


@contextmanager
def opt_in_hooks(model: Any, names: str | Iterable[str], who: str | None = None) -> Iterator[None]:
    """Within the block, the opt-in hook points among `names` fire (`OptInSwitch`); a flag it
    switched on is off again after, once no other open work holds it."""
    switch = OptInSwitch(model)
    try:
        switch.need(names, who)
        yield
    finally:
        switch.restore()


class OptInPin:
    """A server's hold on a model it shares between requests: while held, the flags that the hook
    points of what it serves need (`needs`: who -> hook names, e.g. "store 'a'" -> its SAE's hooks)
    are on, and the model is pinned, so that no request switches another one on (`OptInSwitch`
    refuses). Two needs that cannot be on together are refused at `hold`, naming both. `release`
    lets go (the flags it switched on go off, once no other work holds them); both may be called again."""

    def __init__(self, model: Any, needs: Mapping[str, Iterable[str]], pinned_by: str = "this server") -> None:
        self.model, self.pinned_by = model, pinned_by
        self.needs = {who: list(names) for who, names in needs.items()}
        self._switch: OptInSwitch | None = None

    def hold(self) -> None:
        """Switch on what the needs need and pin the model (nothing when held already)."""
        if self._switch is not None:
            return
        on: dict[str, str] = {}  # flag -> who needed it
        switch = OptInSwitch(self.model)
        for who, names in self.needs.items():
            for name in names:
                flag = _flag_of(self.model, name)
                try:
                    switch.need(name, who)
                except UnknownHookError as e:
                    switch.restore()
                    if isinstance(e, OptInConflictError) and on:
                        raise OptInConflictError(
                            f"{who}: {name} needs TransformerLens's {flag}, which cannot be on together with the "
                            f"opt-in hook points of {', '.join(sorted(set(on.values())))} on the same model "
                            f"(hook_attn_in and hook_q/k/v_input exclude each other); serve them from separate "
                            f"servers") from None
                    raise
                if flag is not None:
                    on.setdefault(flag, who)
        with _LOCK:
            _PINNED.setdefault(id(self.model), []).append(self.pinned_by)
        self._switch = switch

    def release(self) -> None:
        """Unpin the model and let go of the flags `hold` held (nothing when not held)."""
        switch, self._switch = self._switch, None
        if switch is None:
            return
        with _LOCK:
            pins = _PINNED[id(self.model)]
            pins.remove(self.pinned_by)
            if not pins:
                del _PINNED[id(self.model)]
        switch.restore()


def check_hooks(model: Any, names: str | Sequence[str], who: str | None = None, *,
                per_token: bool = False) -> list[str]:
    """`check_hook` for each name (one name may be given as a string); returns them as a list."""
    names = [names] if isinstance(names, str) else list(names)
    return [check_hook(model, n, who, per_token=per_token) for n in names]


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's first parameter (float32 for a model without parameters)."""
    for p in model.parameters():
        return p.dtype
    return torch.float32


class HookPairError(SaesteerError, ValueError):
    """A transcoder's (input hook, target hook) pair that cannot work on this model."""


def transcoder_target(sae: Any, who: str = "this transcoder") -> str:
    """The hook point a transcoder predicts (its `cfg.metadata["hook_name_out"]`, SAELens's field);
    a HookPairError naming the fix when it records none."""
    target = (sae.cfg.metadata or {}).get("hook_name_out")
    if not target:
        raise HookPairError(f"{who} does not record the hook point it predicts; set "
                            f"sae.cfg.metadata['hook_name_out'] (e.g. 'blocks.1.hook_mlp_out')")
    return str(target)


@torch.no_grad()
def check_transcoder_hooks(model: Any, hook_in: str, hook_out: str, who: str | None = None, *,
                           d_in: int | None = None, d_out: int | None = None) -> tuple[int, int]:
    """The widths (d_in, d_out) of a transcoder's input and target hooks on `model`, after checking
    the pair: both hooks exist and are per-token, the target fires after the input in the forward
    pass (a transcoder predicts a later activation from an earlier one), and the widths equal
    `d_in` / `d_out` when given (a transcoder made for another model or hook). One tiny forward
    pass (two tokens) observes the firing order and the widths."""
    where = f"{who}: " if who else ""
    check_hooks(model, [hook_in, hook_out], who, per_token=True)
    if hook_in == hook_out:
        raise HookPairError(f"{where}the input and target hooks are both {hook_in!r}; a transcoder's target "
                            f"(target_hook) is a later hook point, e.g. the MLP's output", field="target_hook")
    fired: list[tuple[str, int]] = []

    def recorder(name: str):
        # the name asked for, not `hook.name`: on a TransformerBridge an alias such as
        # blocks.0.hook_mlp_out fires under its canonical name (blocks.0.mlp.hook_out)
        def record(act: torch.Tensor, hook: Any) -> None:
            fired.append((name, int(act.shape[2] * act.shape[3] if act.ndim > 3 else act.shape[-1])))

        return record

    tokens = torch.zeros(1, 2, dtype=torch.long, device=model_device(model))
    with opt_in_hooks(model, [hook_in, hook_out], who):
        model.run_with_hooks(tokens, fwd_hooks=[(hook_in, recorder(hook_in)), (hook_out, recorder(hook_out))])
    order = [name for name, _ in fired]
    widths = dict(fired)
    if hook_in not in widths or hook_out not in widths:
        raise HookPairError(f"{where}hook {hook_in if hook_in not in widths else hook_out!r} did not fire in a "
                            f"forward pass of this model")
    if order.index(hook_out) < order.index(hook_in):
        raise HookPairError(f"{where}the target hook {hook_out!r} runs before the input hook {hook_in!r}; a "
                            f"transcoder predicts a later activation: swap them (hook={hook_out}, "
                            f"target_hook={hook_in})", field="target_hook")
    for name, got, want, fld in ((hook_in, widths[hook_in], d_in, "d_in"), (hook_out, widths[hook_out], d_out, "d_out")):
        if want is not None and got != want:
            raise HookPairError(f"{where}hook {name!r} has width {got} on this model but the transcoder's {fld} is "
                                f"{want}: it was made for another model or hook point", field=fld)
    return widths[hook_in], widths[hook_out]
