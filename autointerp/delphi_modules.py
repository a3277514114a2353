"""Which delphi hookpoint (an HF module path) reads a feature store's SAE hook (a TransformerLens hook).

delphi (0.1.3, sparsify SAEs on `AutoModel`) names a latent's module after the hookpoint: the base
model's module path ("layers.6" for Llama, Mistral, Qwen, Gemma, GPT-NeoX; "h.6" for GPT-2; a
wrapper's prefix where `resolve_path` adds one, "model.layers.6"). An SAE there reads the module's
output; a transcoder (delphi's `transcode`) reads its input. The HF -> TransformerLens mapping is
saes.formats.base's `tl_hook_for_module` / `tl_hook_for_module_input`, the one sparsify's loader uses,
with `module_output_hook`: an MLP's output is `blocks.N.hook_mlp_out`, or `blocks.N.mlp.hook_out` on a
model (the store's) whose blocks norm or scale it before the residual add (Gemma 2/3, OLMo 2, Granite);
attention's (`layers.N.self_attn`) likewise `hook_attn_out` or `attn.hook_out`.

Block N's residual input is block N-1's output (`blocks.N.hook_resid_pre` is the same tensor as
`blocks.{N-1}.hook_resid_post`), so an SAE on resid_pre of block N pairs with delphi's `layers.{N-1}`.
`layers.N` read at its input is a transcoder on the whole layer: rare, and easily the off-by-one
above, so it fits only when the user names it (--delphi-module). A module saesteer has no hook for
(a norm, a projection) fits only when named too, with a note that saesteer could not check it.
"""

from __future__ import annotations

import re

__all__ = ["check_module", "fitting_modules", "module_for_hook"]

_RESID_PRE = re.compile(r"blocks\.(\d+)\.hook_resid_pre")


def _output_hook(module: str, model: str | None) -> str | None:
    """The hook of what `module` outputs on `model` (the store's model: its config decides an MLP's)."""
    from saes.formats.base import module_output_hook, tl_hook_for_module

    return module_output_hook(tl_hook_for_module(module), model)


def _fit(module: str, hook: str, model: str | None) -> str | None:
    """'output' (an SAE at `module` reads `hook`), 'mlp input' (a transcoder on an MLP), 'layer input'
    (a transcoder on a whole layer), 'unknown' (no hook saesteer knows for the module) or None (another hook)."""
    from saes.formats.base import same_tensor_hooks, tl_hook_for_module_input

    out, inp = _output_hook(module, model), tl_hook_for_module_input(module)
    same = same_tensor_hooks(hook)
    if module in same or out in same:
        return "output"
    if inp == hook:
        return "mlp input" if module.endswith(".mlp") else "layer input"
    return "unknown" if out is None and inp is None else None


_SURE_FITS = ("output", "mlp input")  # the fits of a module that surely reads the hook


def fitting_modules(modules: list[str], hook: str, model: str | None) -> list[str]:
    """The modules that surely read `hook` on `model` (what a run's module is picked from without --delphi-module)."""
    return [m for m in modules if _fit(m, hook, model) in _SURE_FITS]


def check_module(module: str, hook: str, model: str | None, store_path: object, named: bool,
                 exporting: bool = False) -> str | None:
    """Refuse a module that reads another hook on `model` (the store's), naming both; `named`: the user gave it
    (--delphi-module), which vouches for a module saesteer cannot check; `exporting`: the refusal's advice is
    about the export's name (--export-delphi), not the run to import. Returns a note when it could not check."""
    fit = _fit(module, hook, model)
    if fit in _SURE_FITS:
        return None
    if named and fit == "layer input":
        return f"delphi module {module!r} taken as a transcoder read at its input ({hook}), as --delphi-module says"
    if named and fit == "unknown":
        return (f"saesteer cannot tell which hook delphi module {module!r} reads; taken as this SAE's {hook}, "
                "as --delphi-module says")
    theirs = _output_hook(module, model)
    if fit == "layer input":
        m = _RESID_PRE.fullmatch(hook)
        prev = f"the run of layers.{int(m[1]) - 1} fits it" if int(m[1]) > 0 else "no delphi layer's output is it"
        raise ValueError(f"delphi module {module!r} reads {theirs} (its output), but the SAE of {store_path} reads "
                         f"{hook}, that layer's input: {prev}; if this SAE is a transcoder on {module}, name it "
                         f"with --delphi-module {module}")
    if fit == "unknown":
        raise ValueError(f"delphi module {module!r} reads no hook saesteer knows, and the SAE of {store_path} reads "
                         f"{hook}; if {module!r} is this SAE's hookpoint, name it with --delphi-module {module}")
    if exporting:
        usual = module_for_hook(hook, model)
        fix = ("name this SAE's hookpoint with --delphi-module" + (f" (e.g. {usual}), or leave it out" if usual else ""))
    else:
        fix = "import the delphi run of this SAE's hookpoint"
    raise ValueError(f"delphi module {module!r} reads {theirs}, but the SAE of {store_path} reads {hook}; {fix}")


def module_for_hook(hook: str, model: str | None) -> str | None:
    """The 'layers.N' module path delphi names for `hook` on `model` (Llama, Mistral, Qwen, Gemma, GPT-NeoX),
    or None."""
    m = re.fullmatch(r"blocks\.(\d+)\..+", hook)
    if m is None:
        return None
    n = int(m[1])
    candidates = [f"layers.{n}", f"layers.{n}.mlp"] + ([f"layers.{n - 1}"] if n > 0 else [])
    # the first that fits, trying no further: asking about an MLP's output reads the model's config, and where
    # it is not at hand says so in a note about hook_mlp_out, which a residual-stream SAE's export never reads
    return next((c for c in candidates if _fit(c, hook, model) in _SURE_FITS), None)
