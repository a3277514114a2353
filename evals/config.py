"""What `saesteer eval` measures and on how much data (one config; CLI flags are generated from it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from saes.validators import finite_number, require, whole_number


@dataclass
class EvalConfig:
    """Evaluation of any SAE on held-out text: reconstruction, sparsity, model loss, absorption, probing."""

    contexts: int = field(default=64, metadata={"help": "held-out contexts whose tokens give the activation metrics "
                                                        "(EV, MSE, L0, dead/dense, cosine, relative norm)"})
    ce_contexts: int = field(default=64, metadata={"help": "held-out contexts for CE loss recovered and KL with the "
                                                           "SAE spliced in, from the first (more than --contexts "
                                                           "reads further; 0: skip; train's --eval-ce-contexts "
                                                           "default too)"})
    ce_batch_size: int = field(default=16, metadata={"help": "contexts per model forward pass in the CE evaluation "
                                                             "(fewer where their float32 logits would pass 256 MB: a "
                                                             "large vocabulary)"})
    model_batch_size: int = field(default=16, metadata={"help": "contexts per model forward pass when collecting "
                                                                "activations"})
    dense_threshold: float = field(default=0.1, metadata={"help": "a latent firing on more than this fraction of "
                                                                  "held-out tokens counts as dense"})
    exclude_bos: bool = field(default=True, metadata={"help": "leave BOS positions out of the activation metrics and "
                                                              "keep their clean activation when the SAE is spliced in "
                                                              "(as training on a cache that excluded BOS does); "
                                                              "the other tokens an SAE's training cache left out "
                                                              "(cache --exclude-tokens special) are left out either "
                                                              "way"})
    absorption: bool = field(default=True, metadata={"help": "SAEBench-style first-letter feature absorption"})
    absorption_max_k: int = field(default=10, metadata={"help": "largest k-sparse probe tried when finding each "
                                                                "letter's main latents"})
    absorption_f1_jump: float = field(default=0.03, metadata={"help": "a k-sparse probe must beat the best smaller k "
                                                                      "by this much F1 to add latents (feature split)"})
    absorption_prefix: str = field(default="", metadata={"help": "text before each word of the first-letter task "
                                                                 "(the word's own position is read)"})
    absorption_min_words: int = field(default=4, metadata={"help": "training words a letter needs to be evaluated"})
    probing: bool = field(default=True, metadata={"help": "sparse probing: toy-world concepts on the toy model, or "
                                                          "--probing-dataset"})
    probing_dataset: str | None = field(default=None, metadata={"help": "labelled text (.jsonl/.json/.parquet with "
                                                                        "text and label columns) for sparse probing; "
                                                                        "texts are mean-pooled"})
    probing_text_column: str = field(default="text", metadata={"help": "column of --probing-dataset holding the "
                                                                       "text (not --text-column: that is the "
                                                                       "held-out text's)"})
    probing_label_column: str = field(default="label", metadata={"help": "column of --probing-dataset holding the "
                                                                         "label"})
    probing_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10],
                                  metadata={"help": "numbers of latents the sparse probes may use"})
    probing_max_per_class: int = field(default=400, metadata={"help": "examples kept per class and task (balanced)"})
    probing_min_positives: int = field(default=20, metadata={"help": "examples a class needs to be probed"})
    seed: int = field(default=0, metadata={"help": "seed of the splits and subsamples"})
    allow_eval_overlap: bool = field(default=False, metadata={"help": "evaluate even when the held-out text is all "
                                                                      "text an SAE was trained on (refused by "
                                                                      "default; a partial overlap is reported)"})

    def __post_init__(self) -> None:
        whole_number("EvalConfig", "contexts", self.contexts, minimum=1)
        whole_number("EvalConfig", "ce_contexts", self.ce_contexts, minimum=0)
        for name in ("ce_batch_size", "model_batch_size", "absorption_max_k", "absorption_min_words",
                     "probing_max_per_class", "probing_min_positives"):
            whole_number("EvalConfig", name, getattr(self, name), minimum=1)
        finite_number("EvalConfig", "dense_threshold", self.dense_threshold, 0.0, 1.0)
        finite_number("EvalConfig", "absorption_f1_jump", self.absorption_f1_jump, 0.0, 1.0)
        require(self.absorption_f1_jump < 1.0, f"EvalConfig.absorption_f1_jump must be below 1; got "
                f"{self.absorption_f1_jump!r}", field="absorption_f1_jump")
        ks = [int(k) for k in self.probing_ks]
        require(ks and all(k >= 1 for k in ks), f"EvalConfig.probing_ks must be positive integers; got "
                f"{self.probing_ks!r}", field="probing_ks")
        self.probing_ks = sorted(set(ks))
