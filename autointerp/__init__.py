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

Modules: `judge` (retries, cache, accounting, re-asks), `wire` (a backend's request, response and
errors), `backends` (OpenAI-compatible HTTP, local transformers), `anthropic_messages` (Claude
through Anthropic's Messages API), `sdk_attempt` (what the two HTTP backends share: a client per
event loop, one deadline per attempt, an HTTP status as the judge's failure), `prompts` (escaped
prompts and answer parsers), `schema`, `interp` (LLM explainer and detection / fuzzing scorers),
`concept` (offline concept phrases: the default offline explainer), `offline` (token-list
labeller), `contrastive` (LLM explainer against near misses), `simulation`, `intruder`,
`embedding_score` (scorers), `output_score` (does steering move text toward the label?),
`embeddings` (OpenAI-compatible, sentence-transformers, offline hashing), `semantic` (label vectors
in the store, search by meaning), `runner`, `store` (the LabelStore interface), `featurestore` (it,
over `features.FeatureStore`), `cache`, `accounting`, `config`.

Importing this package imports neither `openai`, `anthropic`, `torch` nor `features`; they load
when used. Names are imported lazily, so the CLI reads `autointerp.config` for its flags without
loading the judge, its backends or asyncio.
"""

from __future__ import annotations

from saes.lazy import lazy_exports

_LAZY = {
    "AnswerInvalid": "autointerp.judge",
    "AnthropicBackend": "autointerp.anthropic_messages",
    "Budget": "autointerp.accounting",
    "BudgetExceeded": "autointerp.accounting",
    "Completion": "autointerp.judge",
    "CredentialsRejected": "autointerp.judge",
    "DryRunEstimate": "autointerp.runner",
    "Example": "autointerp.examples",
    "FeatureStoreLabels": "autointerp.featurestore",
    "InvalidAnswer": "autointerp.judge",
    "Judge": "autointerp.judge",
    "JudgeCall": "autointerp.judge",
    "JudgeConfig": "autointerp.config",
    "JudgeError": "autointerp.judge",
    "LabelConfig": "autointerp.config",
    "LabelFailure": "autointerp.store",
    "LabelResult": "autointerp.store",
    "LabelStore": "autointerp.store",
    "LatentExamples": "autointerp.examples",
    "Ledger": "autointerp.accounting",
    "MemoryLabelStore": "autointerp.store",
    "OpenAIBackend": "autointerp.backends",
    "PROMPT_VERSION": "autointerp.prompts",
    "Prices": "autointerp.accounting",
    "RequestFailed": "autointerp.judge",
    "ResponseCache": "autointerp.cache",
    "RetryPolicy": "autointerp.judge",
    "RunReport": "autointerp.runner",
    "TransformersBackend": "autointerp.backends",
    "estimate_run": "autointerp.runner",
    "label_latents": "autointerp.runner",
    "label_latents_async": "autointerp.runner",
    "make_judge": "autointerp.config",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
