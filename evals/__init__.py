"""evals: evaluate any SAE (trained here or loaded from another library) on held-out data.

- `activations`: held-out activations of a model at several hook points over token contexts, or the rows a
  training run held out of its activation cache;
- `reconstruction`: EV, MSE, L0, dead/dense (training.evaluate's functions), cosine similarity,
  relative norm (shrinkage), CE loss recovered and KL with the SAE spliced in;
- `absorption`: SAEBench-style first-letter feature absorption;
- `probing`: SAEBench-style sparse probing (token concepts or labelled texts);
- `synthetic`: ground-truth feature recovery (F1, MCC) on SAELens's synthetic data generator, scored by
  SAELens's own evaluation (benchmarks/bench_synthetic.py, tests/test_synthetic_quality.py);
- `run`: several SAEs side by side; `report`: eval.json and a plotly eval.html.

Floors: imports `saes` and `training`; receives loaded models and SAEs (the face resolves names).
"""

from evals.config import EvalConfig

__all__ = ["EvalConfig"]
