"""autointerp: label and score SAE latents with an LLM judge, robustly and cheaply.

Labelling a feature store (what `saesteer label` does):

    from autointerp import FeatureStoreLabels, JudgeConfig, LabelConfig, make_judge, label_latents
    judge = make_judge(JudgeConfig(model="gpt-4o-mini"), cache_path="toy.db.judge-cache.sqlite")
    with FeatureStoreLabels.open("toy.db") as store:        # judge=None -> offline labeller
        report = label_latents(store, judge, LabelConfig(budget="2usd"))

The judge, for any structured question (the steering evals use it for concept / instruction /
fluency ratings):

    judge = make_judge(JudgeConfig(model="gpt-4o-mini", base_url=None), cache_path="judge-cache.sqlite")
    done = judge.complete_sync(messages, schema={...}, validate=fn)   # or: await judge.complete(...)
    done.value, done.prompt_tokens, done.cost_usd, done.cached
    results = judge.complete_many_sync([JudgeCall(messages, schema), ...])   # concurrent, bounded

Modules: `judge` (retries, cache, accounting, re-asks), `backends` (OpenAI-compatible HTTP, local
transformers), `prompts` (escaped prompts and answer parsers), `schema`, `interp` (LLM explainer
and detection / fuzzing scorers), `concept` (offline concept phrases: the default offline
explainer), `offline` (token-list labeller), `contrastive` (LLM explainer against near misses),
`simulation`, `intruder`, `embedding_score` (scorers), `output_score` (does steering move text
toward the label?), `embeddings` (OpenAI-compatible, sentence-transformers, offline hashing),
`semantic` (label vectors in the store, search by meaning), `runner`, `store` (the LabelStore
interface), `featurestore` (it, over `features.FeatureStore`), `cache`, `accounting`, `config`.

Importing this package imports neither `openai`, `torch` nor `features`; they load when used.
"""

from autointerp.accounting import Budget, BudgetExceeded, Ledger, Prices
from autointerp.backends import OpenAIBackend, TransformersBackend
from autointerp.cache import ResponseCache
from autointerp.config import JudgeConfig, LabelConfig, make_judge
from autointerp.examples import Example, LatentExamples
from autointerp.featurestore import FeatureStoreLabels
from autointerp.judge import (AnswerInvalid, Completion, InvalidAnswer, Judge, JudgeCall, JudgeError, RequestFailed,
                              RetryPolicy)
from autointerp.prompts import PROMPT_VERSION
from autointerp.runner import DryRunEstimate, RunReport, estimate_run, label_latents, label_latents_async
from autointerp.store import LabelFailure, LabelResult, LabelStore, MemoryLabelStore

__all__ = [
    "AnswerInvalid", "Budget", "BudgetExceeded", "Completion", "DryRunEstimate", "Example", "FeatureStoreLabels",
    "InvalidAnswer", "Judge", "JudgeCall", "JudgeConfig", "JudgeError", "LabelConfig", "LabelFailure", "LabelResult",
    "LabelStore", "LatentExamples", "Ledger", "MemoryLabelStore", "OpenAIBackend", "PROMPT_VERSION", "Prices",
    "RequestFailed", "ResponseCache", "RetryPolicy", "RunReport", "TransformersBackend", "estimate_run",
    "label_latents", "label_latents_async", "make_judge",
]
