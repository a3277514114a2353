"""steering: interventions on SAE latents by feature ID, hooked into TransformerLens generation.

    from steering import steer, FeatureEdit, GenerationConfig
    with steer(model, sae, ["123:clamp=8", FeatureEdit(7, "add", 2.0, unit="max_act")],
               typical_max=store_max) as s:
        res = s.generate(["the ship"], GenerationConfig(max_new_tokens=20, seed=0))

Edits keep the SAE's reconstruction error (only the chosen latents change); positions (all,
prompt, generated, last, token indices) are exact under the KV cache and left padding; hooks are
removed on every exit path. See spec.py for the edit grammar, session.py for the hooks.
"""

from steering.generate import Comparison, Generation, GenerationConfig, compare, generate
from steering.interventions import LatentEditor, current_activations, reference_edit
from steering.session import ResolvedEdit, SteeringSession, build_plan, hooks_attached, resolve_edits, steer
from steering.spec import (
    OPS, POSITION_NAMES, Edit, FeatureEdit, Positions, SteerLimits, SteeringError, VectorEdit, parse_edit,
)

__all__ = [
    "Comparison", "Edit", "FeatureEdit", "Generation", "GenerationConfig", "LatentEditor", "OPS",
    "POSITION_NAMES", "Positions", "ResolvedEdit", "SteerLimits", "SteeringError", "SteeringSession",
    "VectorEdit", "build_plan", "compare", "current_activations", "generate", "hooks_attached",
    "parse_edit", "reference_edit", "resolve_edits", "steer",
]
