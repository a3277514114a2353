"""The rows of the formats `features.publish` writes, as field name -> JSON type, and the check
that refuses a missing, unknown or mistyped field, naming the file, the row and the field.

`FIELDS` is ours, written from the public sources `features.publish` names: Neuronpedia's prisma
schema (models Neuron, Activation, Explanation, ExplanationScore, Model, Source, SourceSet,
SourceRelease) and SAEDashboard's NeuronpediaDashboardFeature / NeuronpediaDashboardActivation.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["FIELDS", "check_rows", "PublishError", "OPT"]

S, I, F, B = "string", "integer", "number", "boolean"
LS, LI, LF = "list[string]", "list[integer]", "list[number]"
OPT = "?"  # suffix: may be null

# table -> field -> JSON type (Neuronpedia's prisma schema; "?" = nullable)
FIELDS: dict[str, dict[str, str]] = {
    "model": {"id": S, "displayNameShort": S, "displayName": S, "creatorId": S, "layers": I, "neuronsPerLayer": I,
              "owner": S, "instruct": B, "visibility": S, "createdAt": S, "updatedAt": S, "tlensId": S + OPT},
    "source": {"id": S, "modelId": S, "setName": S, "creatorId": S, "visibility": S, "hasDashboards": B,
               "num_prompts": I + OPT, "num_tokens_in_prompt": I + OPT, "dataset": S + OPT, "hfRepoId": S + OPT,
               "hfFolderId": S + OPT, "createdAt": S},
    "sourceset": {"modelId": S, "name": S, "description": S, "creatorName": S, "creatorId": S, "releaseName": S + OPT,
                  "visibility": S, "type": S, "createdAt": S},
    "release": {"name": S, "description": S, "descriptionShort": S + OPT, "creatorName": S, "creatorNameShort": S + OPT,
                "creatorId": S, "visibility": S, "urls": LS, "createdAt": S},
    "features": {"modelId": S, "layer": S, "index": S, "maxActApprox": F, "creatorId": S, "frac_nonzero": F,
                 "freq_hist_data_bar_heights": LF, "freq_hist_data_bar_values": LF,
                 "logits_hist_data_bar_heights": LF, "logits_hist_data_bar_values": LF,
                 "neuron_alignment_indices": LI, "neuron_alignment_l1": LF, "neuron_alignment_values": LF,
                 "correlated_neurons_indices": LI, "correlated_neurons_l1": LF, "correlated_neurons_pearson": LF,
                 "correlated_features_indices": LI, "correlated_features_l1": LF, "correlated_features_pearson": LF,
                 "decoder_weights_dist": LF, "neg_str": LS, "neg_values": LF, "pos_str": LS, "pos_values": LF,
                 "sourceSetName": S, "topkCosSimIndices": LI, "topkCosSimValues": LF, "vector": LF,
                 "vectorLabel": S + OPT, "hookName": S + OPT, "vectorDefaultSteerStrength": F + OPT, "hasVector": B,
                 "umap_x": F + OPT, "umap_y": F + OPT},
    "activations": {"id": S, "modelId": S, "layer": S, "index": S, "creatorId": S, "dataSource": S + OPT,
                    "dataIndex": S + OPT, "tokens": LS, "maxValue": F, "minValue": F, "values": LF,
                    "maxValueTokenIndex": I, "dfaValues": LF, "dfaMaxValue": F + OPT, "dfaTargetIndex": I + OPT,
                    "binContains": F + OPT, "binMin": F + OPT, "binMax": F + OPT, "qualifyingTokenIndex": I + OPT,
                    "lossValues": LF, "createdAt": S},
    "explanations": {"id": S, "modelId": S, "layer": S, "index": S, "authorId": S, "description": S,
                     "embedding": LF + OPT, "typeName": S + OPT, "explanationModelName": S + OPT, "umap_x": F + OPT,
                     "umap_y": F + OPT, "umap_cluster": I + OPT, "umap_log_feature_sparsity": F + OPT},
    "explanation_scores": {"id": S, "initiatedByUserId": S, "value": F, "explanationId": S,
                           "explanationScoreTypeName": S, "explanationScoreModelName": S, "jsonDetails": S,
                           "createdAt": S},
    "explanation_score_type": {"name": S, "displayName": S, "description": S, "creatorName": S, "creatorId": S,
                               "scoreDescription": S + OPT, "featured": B, "isAttention": B, "createdAt": S},
    "explanation_model_type": {"name": S, "displayName": S, "description": S, "creatorName": S, "creatorId": S,
                               "url": S + OPT, "featured": B, "createdAt": S},
    # SAEDashboard's batch JSON
    "dashboard_batch": {"model_id": S, "layer": I, "sae_set": S, "sae_id_suffix": S + OPT, "features": "list[object]"},
    "dashboard_feature": {"feature_index": I, "neuron_alignment_indices": LI, "neuron_alignment_values": LF,
                          "neuron_alignment_l1": LF, "correlated_neurons_indices": LI, "correlated_neurons_l1": LF,
                          "correlated_neurons_pearson": LF, "correlated_features_indices": LI,
                          "correlated_features_l1": LF, "correlated_features_pearson": LF, "neg_str": LS,
                          "neg_values": LF, "pos_str": LS, "pos_values": LF, "frac_nonzero": F,
                          "freq_hist_data_bar_values": LF, "freq_hist_data_bar_heights": LF,
                          "logits_hist_data_bar_heights": LF, "logits_hist_data_bar_values": LF,
                          "n_prompts_total": I, "n_tokens_in_prompt": I, "dataset": S, "decoder_weights_dist": LF,
                          "activations": "list[object]", "vector": LF},
    # bins null: a quantile example of a latent without a histogram (no bin; -1 marks the top group)
    "dashboard_activation": {"bin_min": F + OPT, "bin_max": F + OPT, "bin_contains": F + OPT, "tokens": LS, "values": LF,
                             "qualifying_token_index": I},
}


class PublishError(ValueError):
    """An export row does not match the format it claims."""


def _is(value: Any, kind: str) -> bool:
    if kind.endswith(OPT):
        return value is None or _is(value, kind[:-1])
    if kind.startswith("list["):
        inner = kind[5:-1]
        return isinstance(value, list) and all(_is(v, inner) for v in value)
    if kind == S:
        return isinstance(value, str)
    if kind == B:
        return isinstance(value, bool)
    if kind == I:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == F:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "object":
        return isinstance(value, dict)
    raise AssertionError(f"unknown field type {kind}")


def check_rows(table: str, rows: Iterable[dict], where: str = "") -> int:
    """Every row has exactly the fields of `table`, each of its type; returns the row count."""
    spec = FIELDS[table]
    n = 0
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise PublishError(f"{where or table} row {n}: not a JSON object")
        missing = sorted(set(spec) - set(row))
        extra = sorted(set(row) - set(spec))
        if missing or extra:
            raise PublishError(f"{where or table} row {n}: missing fields {missing}, unknown fields {extra}")
        for k, kind in spec.items():
            if not _is(row[k], kind):
                raise PublishError(f"{where or table} row {n}: field {k!r} must be {kind}, got {row[k]!r:.80}")
    return n
