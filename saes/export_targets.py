"""What `saesteer convert --to` can write, kept apart from saes.formats.export so that building the CLI's
parser (which lists the targets) imports no torch."""

from __future__ import annotations

TARGETS = {
    "saesteer": "SAELens's cfg.json + sae_weights.safetensors with saesteer.json (the provenance, local paths cut)",
    "saelens": "SAELens's cfg.json + sae_weights.safetensors (what SAE.save_model writes)",
    "sparsify": "a sparsify run folder: HOOKPOINT/cfg.json + sae.safetensors and the run's config.json",
    "dictionary_learning": "dictionary_learning's ae.pt + config.json (what trainSAE writes)",
}
# Not a target (an SAE alone makes no Neuronpedia upload), but a user asks for it: the answer, in one line.
NO_NEURONPEDIA = ("Neuronpedia has no file format for SAE weights: it takes an SAE's weights as a SAELens folder "
                  "(`saesteer convert SAE --to saelens`) and its latents' dashboards from a feature store "
                  "(`saesteer features build --sae SAE ...`, then `saesteer features export STORE OUT --format "
                  "neuronpedia`)")
