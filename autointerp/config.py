"""Configs of auto-interp (fields become `saesteer label` flags) and the judge factory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:
    from .judge import Judge

__all__ = ["JudgeConfig", "LabelConfig", "parse_latents", "resolve_backend", "check_judge", "make_judge",
           "ENV_MODEL", "ENV_BASE_URL", "ENV_API_KEY", "REASONING_EFFORTS", "THINKING"]

SCORERS = ("detection", "fuzzing", "simulation", "intruder", "embedding")
# what servers take as reasoning_effort: the openai package's `ReasoningEffort` (openai 3.52:
# types/shared/reasoning_effort.py); "none" is also Ollama's and vLLM's "thinking off"
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# what Anthropic's API takes as thinking.type (anthropic 2.x: types/thinking_config_*_param.py)
THINKING = ("adaptive", "enabled", "disabled")
ENV_MODEL = "SAESTEER_JUDGE_MODEL"
ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_API_KEY = "OPENAI_API_KEY"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class JudgeConfig:
    """Judge: which LLM answers, how requests are retried, cached and priced."""

    backend: Literal["auto", "openai", "anthropic", "transformers", "offline"] = field(
        default="auto",
        metadata={"help": "auto: an OpenAI-compatible server when a model is configured (--judge-model or "
                          f"${ENV_MODEL}), else offline token statistics; anthropic: Claude through Anthropic's "
                          "Messages API (key from $ANTHROPIC_API_KEY); transformers: a local HF model "
                          "directory given as --judge-model"},
    )
    model: str | None = field(
        default=None, metadata={"help": f"judge model name (default ${ENV_MODEL}); for backend transformers, a local model dir"}
    )
    base_url: str | None = field(
        default=None, metadata={"help": f"OpenAI-compatible server URL, e.g. http://localhost:8000/v1 (default ${ENV_BASE_URL}); "
                                        "for backend anthropic the server's root (default $ANTHROPIC_BASE_URL, else Anthropic's)"}
    )
    api_key: str | None = field(
        default=None, metadata={"help": f"API key (default ${ENV_API_KEY}, $ANTHROPIC_API_KEY for backend anthropic; prefer "
                                        "the environment variable)"}
    )
    timeout_s: float = field(default=60.0, metadata={"help": "seconds before a request counts as timed out (then retried)"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at most"})
    max_retries: int = field(default=6, metadata={"help": "retries of a request after 429 / 5xx / reset / timeout"})
    backoff_base_s: float = field(default=1.0, metadata={"help": "first retry backoff in seconds (doubles each retry, jittered)"})
    backoff_max_s: float = field(default=60.0, metadata={"help": "longest backoff between retries"})
    max_retry_after_s: float = field(default=300.0, metadata={"help": "longest server-requested (Retry-After) wait honoured"})
    max_reasks: int = field(default=2, metadata={"help": "times an invalid or refused answer is asked again before the latent fails"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature of the judge"})
    response_format: Literal["text", "json_object"] = field(
        default="text", metadata={"help": "json_object asks the server for JSON mode (OpenAI, vLLM, Ollama support it)"}
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = field(
        default="max_tokens", metadata={"help": "name of the output-length parameter (reasoning models want "
                                                "max_completion_tokens; it is switched to on their refusal, with a note)"}
    )
    reasoning_tokens: int = field(
        default=0, metadata={"help": "output tokens added to every request's limit for a reasoning model's thinking (it "
                                     "counts as output; without room the answer is cut off), e.g. 2000"}
    )
    # a plain str, "" for unset: `none` is a value servers take (thinking off), which the CLI would
    # read as unset for an optional field
    reasoning_effort: str = field(
        default="", metadata={"help": f"sent as reasoning_effort: {', '.join(REASONING_EFFORTS)} (OpenAI reasoning "
                                      "models; Ollama and vLLM read it too, none turns thinking off on Ollama; backend "
                                      "anthropic: low to max as output_config.effort, none turns thinking off); lower "
                                      "effort, fewer reasoning tokens; empty: not sent"}
    )
    thinking: str = field(
        default="", metadata={"help": "backend anthropic: Claude's thinking: adaptive (the model decides how much; depth "
                                      "by --judge-reasoning-effort), enabled (a budget of --judge-reasoning-tokens, at "
                                      "least 1024; Claude 4.6 and earlier), disabled; empty: not sent (the model's "
                                      "default). Thinking never becomes the label"}
    )
    price_input: float | None = field(default=None, metadata={"help": "USD per million input tokens (default: built-in table, else unknown)"})
    price_output: float | None = field(default=None, metadata={"help": "USD per million output tokens"})
    price_cached_input: float | None = field(
        default=None, metadata={"help": "USD per million input tokens the provider's prompt cache served (OpenAI's "
                                        "cached_tokens, Anthropic's cache reads, DeepSeek's cache hits; default: the "
                                        "built-in table, else the input price). A cost the server reports itself "
                                        "(OpenRouter) is used instead of any price"})
    device: str | None = field(default=None, metadata={"help": "device of a transformers judge (default cuda if available)"})
    cache_path: Path | None = field(
        default=None, metadata={"help": "response cache file (default: <store>.judge-cache.sqlite beside the store)"}
    )
    use_cache: bool = field(default=True, metadata={"help": "read and write the response cache"})

    def __post_init__(self) -> None:
        _check(self.backend in ("auto", "openai", "anthropic", "transformers", "offline"),
               f"JudgeConfig.backend must be auto, openai, anthropic, transformers or offline, got {self.backend!r}")
        _check(self.timeout_s > 0, "JudgeConfig.timeout_s must be > 0")
        _check(isinstance(self.concurrency, int) and self.concurrency >= 1, "JudgeConfig.concurrency must be an integer >= 1")
        _check(self.max_retries >= 0, "JudgeConfig.max_retries must be >= 0")
        _check(self.max_reasks >= 0, "JudgeConfig.max_reasks must be >= 0")
        _check(self.backoff_base_s >= 0 and self.backoff_max_s >= 0 and self.max_retry_after_s >= 0,
               "JudgeConfig backoff_base_s, backoff_max_s and max_retry_after_s must be >= 0")
        _check(0.0 <= self.temperature <= 2.0, "JudgeConfig.temperature must be in [0, 2]")
        _check(isinstance(self.reasoning_tokens, int) and self.reasoning_tokens >= 0,
               "JudgeConfig.reasoning_tokens must be an integer >= 0")
        self.reasoning_effort = (self.reasoning_effort or "").strip().lower()  # None (older configs, Python callers): unset
        self.thinking = (self.thinking or "").strip().lower()
        _check(self.thinking in ("", *THINKING),
               f"JudgeConfig.thinking (--judge-thinking) must be one of {', '.join(THINKING)} (or empty: not sent), "
               f"got {self.thinking!r}")
        _check(self.reasoning_effort in ("", *REASONING_EFFORTS),
               f"JudgeConfig.reasoning_effort (--judge-reasoning-effort) must be one of {', '.join(REASONING_EFFORTS)} "
               f"(or empty: not sent), got {self.reasoning_effort!r}")
        for name in ("price_input", "price_output", "price_cached_input"):
            v = getattr(self, name)
            _check(v is None or v >= 0, f"JudgeConfig.{name} must be >= 0 (USD per million tokens)")
        if self.cache_path is not None:
            self.cache_path = Path(self.cache_path)


@dataclass
class LabelConfig:
    """Labelling: which latents, which examples, which scores, how much to spend."""

    latents: str | None = field(default=None, metadata={"help": "latents to label, e.g. '0-99,512' (default: all in the store)"})
    limit: int | None = field(default=None, metadata={"help": "label only this many of them, the most frequent first (a trial run)"})
    n_explain_top: int = field(default=10, metadata={"help": "top-activating examples shown to the explainer"})
    n_explain_quantile: int = field(default=10, metadata={"help": "quantile examples (spread over quantiles) shown to the explainer"})
    n_detect: int = field(default=10, metadata={"help": "held-out activating contexts for detection (and as many non-activating)"})
    n_fuzz: int = field(default=10, metadata={"help": "held-out activating contexts for fuzzing (half get wrong marks)"})
    explainer: Literal["auto", "tokens", "contrastive"] = field(
        default="auto",
        metadata={"help": "auto: offline, concept phrases from contexts, logit effects and neighbours; with a judge, "
                          "examples plus logit effects. tokens: offline token lists (the labeller before concept "
                          "phrases). contrastive: a judge compares the top examples with near-miss negatives"},
    )
    lexicon: str | None = field(
        default="auto",
        metadata={"help": "named word groups for offline concept phrases: a JSON file {category: [words]}, 'toy' "
                          "(the toy world's dictionary), 'auto' (the toy world's for a toy-model store) or 'none'"},
    )
    scorers: tuple[str, ...] = field(
        default=("detection", "fuzzing", "simulation"),
        metadata={"help": "scores to compute: detection, fuzzing, simulation (correlation of activations predicted "
                          "from the label), intruder, embedding (label vs contexts in an embedding space) (or none)"},
    )
    scoring_batch_size: int = field(default=10, metadata={"help": "contexts per scoring request"})
    max_example_tokens: int = field(default=32, metadata={"help": "tokens shown per example (cropped around the peak)"})
    mark_threshold: float = field(default=0.3, metadata={"help": "mark a token as activating when its activation is >= this fraction of the example's max"})
    overwrite: bool = field(default=False, metadata={"help": "relabel latents that already have a label from this judge"})
    seed: int = field(default=0, metadata={"help": "seed of example choice, order and fuzzing marks (part of every prompt)"})
    budget: str | None = field(default=None, metadata={"help": "stop cleanly before this run spends more than this (each run has its own; answers cached "
                                                                        "earlier cost nothing): '2usd', '$2' or '200000tokens'"})
    max_consecutive_failures: int = field(
        default=25, metadata={"help": "stop the run after this many latents in a row failed (a dead or misconfigured judge); 0 = never"}
    )

    def __post_init__(self) -> None:
        for name in ("n_explain_top", "n_explain_quantile", "n_detect", "n_fuzz"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"LabelConfig.{name} must be an integer >= 0")
        _check(self.n_explain_top + self.n_explain_quantile > 0,
               "LabelConfig: n_explain_top + n_explain_quantile must be > 0 (the explainer needs examples)")
        _check(self.scoring_batch_size >= 1, "LabelConfig.scoring_batch_size must be >= 1")
        _check(self.max_example_tokens >= 4, "LabelConfig.max_example_tokens must be >= 4")
        _check(0.0 < self.mark_threshold <= 1.0, "LabelConfig.mark_threshold must be in (0, 1]")
        _check(self.limit is None or self.limit >= 0, "LabelConfig.limit must be >= 0")
        _check(self.explainer in ("auto", "tokens", "contrastive"),
               f"LabelConfig.explainer must be auto, tokens or contrastive, got {self.explainer!r}")
        if self.lexicon is not None and self.lexicon.strip().lower() in ("", "none"):
            self.lexicon = None
        _check(self.max_consecutive_failures >= 0, "LabelConfig.max_consecutive_failures must be >= 0 (0 = never stop)")
        scorers = tuple(s for s in self.scorers if s not in ("none", ""))
        bad = sorted(set(scorers) - set(SCORERS))
        _check(not bad, f"LabelConfig.scorers: unknown {bad}; choose from {', '.join(SCORERS)} (or none)")
        self.scorers = scorers
        if self.latents is not None:
            parse_latents(self.latents)  # validate early
        if self.budget is not None:
            from .accounting import Budget

            _check(isinstance(self.budget, (str, Budget)),
                   f"LabelConfig.budget is an amount with its unit, '2usd', '$2' or '200000tokens' (or an "
                   f"accounting.Budget), got {self.budget!r}: a bare number says neither dollars nor tokens")
            self.budget_value()

    def budget_value(self):
        from .accounting import Budget

        return self.budget if self.budget is None or isinstance(self.budget, Budget) else Budget.parse(self.budget)


def parse_latents(spec: str, what: str = "LabelConfig.latents") -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (sorted, unique); an error names `what` (the field
    or flag the text came from)."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo or lo < 0:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                v = int(part)
                if v < 0:
                    raise ValueError
                out.add(v)
        except ValueError:
            raise ValueError(f"{what}: cannot read {part!r}; write latents and ranges like '0-99,512'") from None
    return sorted(out)


def resolve_backend(cfg: JudgeConfig, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(backend, model) after applying the environment: auto becomes openai when a model is
    configured, else offline."""
    env = os.environ if env is None else env
    model = cfg.model or env.get(ENV_MODEL) or None
    backend = cfg.backend
    if backend == "auto":
        backend = "openai" if model else "offline"
    if backend in ("openai", "anthropic", "transformers") and not model:
        raise ValueError(f"judge backend {backend} needs a model: give --judge-model or set ${ENV_MODEL}")
    return backend, model


def check_judge(cfg: JudgeConfig, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(backend, model) of `cfg` (`resolve_backend`) after the checks of the judge's settings that make
    nothing (no model loaded, no file, nothing sent): settings its backend takes none of, an HTTP
    judge's base URL and credentials (no key for OpenAI's or Anthropic's own API), and a transformers
    judge's local folder that is not there. A command runs it before it loads its own model;
    `make_judge` runs it too."""
    env = os.environ if env is None else env
    backend_name, model = resolve_backend(cfg, env)
    if backend_name == "offline":
        return backend_name, model
    _check(backend_name == "anthropic" or not cfg.thinking,
           "JudgeConfig.thinking (--judge-thinking) is sent to Anthropic's Messages API: give --judge-backend anthropic, "
           "or leave it empty")
    if backend_name == "anthropic":
        _check(cfg.response_format == "text", "JudgeConfig.response_format json_object (--judge-response-format) is "
               "OpenAI's JSON mode; Anthropic's Messages API has none: leave it text")
        _check(cfg.max_tokens_param == "max_tokens", "JudgeConfig.max_tokens_param (--judge-max-tokens-param) names "
               "OpenAI's output-limit parameter; Anthropic's Messages API takes max_tokens: leave it max_tokens")
        _check(cfg.temperature == 0.0, "JudgeConfig.temperature (--judge-temperature): Anthropic's Messages API (version "
               "2026-10-21) takes no temperature on any Claude model; leave it unset (answers are sampled)")
        from .anthropic_messages import check_settings

        check_settings(base_url=cfg.base_url, api_key=cfg.api_key, reasoning_effort=cfg.reasoning_effort,
                       thinking=cfg.thinking, thinking_budget=cfg.reasoning_tokens, env=env)
    elif backend_name == "openai":
        from .backends import openai_endpoint

        openai_endpoint(cfg.base_url, cfg.api_key, env)
    elif backend_name == "transformers":
        from saes.devices import check_device
        from saesteer.models import resolve_spec

        _check(not cfg.reasoning_effort, "JudgeConfig.reasoning_effort (--judge-reasoning-effort) is sent to an "
               "OpenAI-compatible server or Anthropic's API; a transformers judge takes none: leave it empty")
        check_device(cfg.device, field="judge_device")
        try:  # a local folder missing, or without config.json: --model's rule (a hub name is not looked up here)
            resolve_spec(model)
        except FileNotFoundError as e:
            raise ValueError(f"JudgeConfig.model (--judge-model): {e}") from None
    return backend_name, model


def make_judge(cfg: JudgeConfig, *, cache_path: Path | None, budget=None, env: Mapping[str, str] | None = None,
               sleep=None) -> "Judge | None":
    """A ready `Judge` for the configured backend, or None for the offline labeller.

    `cache_path` is used when `cfg.cache_path` is not set; `budget` is an `accounting.Budget`."""
    from .accounting import Ledger, Prices
    from .backends import OpenAIBackend, TransformersBackend
    from .cache import ResponseCache
    from .judge import Judge, RetryPolicy

    env = os.environ if env is None else env
    backend_name, model = check_judge(cfg, env)
    if backend_name == "offline":
        return None
    if backend_name == "openai":
        backend = OpenAIBackend(
            model,
            base_url=cfg.base_url,
            api_key=cfg.api_key,
            timeout_s=cfg.timeout_s,
            max_tokens_param=cfg.max_tokens_param,
            reasoning_effort=cfg.reasoning_effort or None,
            env=env,
        )
    elif backend_name == "anthropic":
        from .anthropic_messages import AnthropicBackend

        backend = AnthropicBackend(
            model, base_url=cfg.base_url, api_key=cfg.api_key, timeout_s=cfg.timeout_s,
            reasoning_effort=cfg.reasoning_effort, thinking=cfg.thinking, thinking_budget=cfg.reasoning_tokens, env=env,
        )
    else:
        # a local folder as `~/models/x` (--judge-model=~/..., quoted, a config file): the home folder,
        # as --model's is, not a hub name
        backend = TransformersBackend.from_pretrained(os.path.expanduser(model), device=cfg.device)
    prices = Prices.for_model(backend.model, cfg.price_input, cfg.price_output, local=backend_name == "transformers",
                              cached_input_per_mtok=cfg.price_cached_input)
    path = cfg.cache_path or cache_path
    cache = ResponseCache(path) if (cfg.use_cache and path is not None) else None
    return Judge(
        backend,
        cache=cache,
        ledger=Ledger(prices, budget),
        retry=RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s, cfg.max_retry_after_s),
        concurrency=cfg.concurrency,
        max_reasks=cfg.max_reasks,
        temperature=cfg.temperature,
        response_format=cfg.response_format,
        sleep=sleep,
        reasoning_tokens=cfg.reasoning_tokens,
    )
