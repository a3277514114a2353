"""Which latents fire on a text: run the model to the SAE's hook point (a scoped hook that is
removed afterwards), encode with the SAE, list the latents per token.

    res = features_on_text(model, sae, "the whale swims", store=store, top_n=5)
    for tok in res.tokens: print(tok.token, [(l.latent, l.act, l.label) for l in tok.latents])

Shape key: S tokens, D d_in, F d_sae.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from features.tokentext import token_text
from saes.bos import prompt_tokens
from saes.hookpoints import check_hook, opt_in_hooks


@dataclass(frozen=True)
class LatentActivation:
    latent: int
    act: float
    label: str | None = None


@dataclass(frozen=True)
class TokenActivations:
    position: int
    token_id: int
    token: str  # the token's piece of the text (features.tokentext): the pieces join to the decoded text
    latents: list[LatentActivation]  # strongest first, at most top_n


@dataclass(frozen=True)
class LatentTotal:
    latent: int
    max_act: float
    total_act: float
    n_tokens: int  # tokens it fires on
    label: str | None = None


@dataclass
class TextActivations:
    text: str
    hook_name: str
    tokens: list[TokenActivations]
    latents: list[LatentTotal] = field(default_factory=list)  # by max activation over the text
    acts_SF: torch.Tensor | None = None  # the dense activations (CPU float32), for callers that want all
    # how special tokens written out in the text were read: "text" (their characters, as the SAE's training
    # data read them) or "match" (the tokens they name, as the model's tokenizer reads a prompt)
    special_tokens: str = "match"


class _StopForward(Exception):
    pass


def hook_activations(model, hook_name: str, tokens_BS: torch.Tensor) -> torch.Tensor:
    """The activation at `hook_name` for `tokens_BS`, captured by a scoped forward hook; the
    forward stops right after it. An unknown hook name is an error listing close matches."""
    check_hook(model, hook_name)
    got: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        got["x"] = act.detach()
        raise _StopForward

    with opt_in_hooks(model, hook_name), model.hooks(fwd_hooks=[(hook_name, grab)]):
        try:
            model(tokens_BS)
        except _StopForward:
            pass
    if "x" not in got:
        raise RuntimeError(f"hook {hook_name!r} did not fire during the forward pass")
    return got["x"]


def text_tokens(model, text: str, prepend_bos: bool, literal_specials: bool = False) -> torch.Tensor:
    """`text`'s tokens [1, S], tokenized once and never cut: a text longer than the model's context
    (`cfg.n_ctx`) is refused naming both lengths (TransformerLens's `to_tokens` would cut it to the
    context without a word, and the latents of its tail would silently be missing).
    `literal_specials`: a special token written out ("<|endoftext|>") is its characters, as a cache
    reads a document (`training.packing.make_tokenize`), after the BOS `prepend_bos` puts first; else
    the prompt as the model's tokenizer reads it (`saes.bos.prompt_tokens`: one BOS)."""
    if literal_specials:
        from training.packing import make_tokenize

        bos = getattr(model.tokenizer, "bos_token_id", None)
        ids = make_tokenize(model.tokenizer, literal_specials=True)([text])[0]
        ids = ([bos] if bos is not None and (prepend_bos or not ids) else []) + list(ids)
        tokens_BS = torch.tensor([ids], dtype=torch.long, device=getattr(model.cfg, "device", None))
    else:
        tokens_BS = prompt_tokens(model, text, prepend_bos, truncate=False)  # one BOS (saes.bos)
    n, n_ctx = int(tokens_BS.shape[1]), getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and n > n_ctx:
        raise ValueError(f"the text is {n} tokens long, more than the model's context of {n_ctx} tokens; shorten it "
                         f"(or split it into parts of at most {n_ctx} tokens, each read on its own)")
    return tokens_BS


@torch.no_grad()
def features_on_text(
    model,
    sae,
    text: str,
    *,
    store=None,
    top_n: int = 10,
    hook_name: str | None = None,
    prepend_bos: bool | None = None,
    min_act: float = 0.0,
    allow_model_mismatch: bool = False,
    special_tokens: str | None = None,
) -> TextActivations:
    """Latents firing on each token of `text`, strongest first (labels from `store` when given;
    the store must have been built from this SAE). `sae`: an SAE or a `saes.formats.LoadedSAE`.
    The text starts with BOS as the SAE's inputs did (`saes.bos.prepend_bos_for`: always for a
    `--bos-policy doc` SAE, else its cfg.json `prepend_bos`, else the model's default) unless
    `prepend_bos` says otherwise; a text longer than the model's context is refused (ValueError,
    `text_tokens`), never cut. An SAE (loaded beside a record) or store
    recorded for another model than `model` is refused (saes.identity.ModelMismatchError) unless
    `allow_model_mismatch`. Inside a `steer` block it reads the model as steered (a clamp shows
    its value; an edit upstream moves what fires): a reading of the model as it runs, unlike
    `contrast_features` and `diff_of_means`, which are refused there (their results are for the
    unsteered model). A special token written out in `text` ("<|endoftext|>", "<s>") is read as the
    SAE's training data read one (`special_tokens` None: its saesteer.json's `data.text.special_tokens`,
    "text" for SAEs trained here since that rule; else as the model's tokenizer reads a prompt,
    "match"): a latent shown on a written-out <|endoftext|> read as the token would be one that fires
    at the document boundaries its training saw, not on those characters."""
    from saes.bos import prepend_bos_for
    from saes.formats.base import sae_of
    from saes.identity import check_sae_model, check_same_model, identity_of_model

    loaded, sae = sae, sae_of(sae)
    hook = hook_name or (sae.cfg.metadata or {}).get("hook_name")
    if not hook:
        raise ValueError("the SAE does not record its hook point (cfg.metadata['hook_name']); pass hook_name=...")
    check_sae_model(model, loaded, allow_mismatch=allow_model_mismatch)
    if store is not None:
        store.check_sae(sae)
        if not allow_model_mismatch:
            check_same_model(store.recorded_model(), identity_of_model(model), recorded_in=f"the feature store {store.path}",
                             given_as="the model given", override="allow_model_mismatch=True",
                             fix="load the model it records (saesteer.models.load_model)")
    # a chat template rendered to text is read as the model reads a chat, whatever the SAE's training read
    reading = special_tokens or ("match" if holds_chat_markers(getattr(model, "tokenizer", None), text) else None) \
        or trained_special_tokens(loaded) or "match"
    tokens_BS = text_tokens(model, text, prepend_bos_for(model, [loaded], prepend_bos), literal_specials=reading == "text")
    x = hook_activations(model, hook, tokens_BS)[0]  # [S, ...]
    x_SD = x.reshape(x.shape[0], -1)
    acts_SF = sae.encode(x_SD.to(device=sae.device, dtype=sae.dtype)).float().cpu()
    ids = tokens_BS[0].tolist()
    tokenizer = getattr(model, "tokenizer", None)
    strs = token_text(tokenizer, ids).pieces if tokenizer is not None else [f"<{i}>" for i in ids]
    k = min(top_n, acts_SF.shape[1])
    vals_SK, idx_SK = acts_SF.topk(k, dim=1)
    fired = (acts_SF > min_act) & (acts_SF > 0)
    latents = fired.any(0).nonzero(as_tuple=True)[0].tolist()
    labels = store.labels(latents) if store is not None and latents else {}
    tokens = []
    for s, (tid, tstr) in enumerate(zip(ids, strs)):
        lat = [LatentActivation(int(i), float(v), labels.get(int(i)))
               for v, i in zip(vals_SK[s].tolist(), idx_SK[s].tolist()) if v > min_act and v > 0]
        tokens.append(TokenActivations(s, int(tid), str(tstr), lat))
    totals = []
    for i in latents:
        col = acts_SF[:, i]
        totals.append(LatentTotal(int(i), float(col.max()), float(col.sum()), int(fired[:, i].sum()), labels.get(int(i))))
    totals.sort(key=lambda t: (-t.max_act, t.latent))
    return TextActivations(text, hook, tokens, totals, acts_SF, reading)


def holds_chat_markers(tokenizer, text: str) -> bool:
    """Whether `text` holds a special token the model's chat template writes (its BOS included): a chat
    rendered to text ("<s>[INST] ..."), whose markers the model reads as tokens. A special token no
    template writes (GPT-2's <|endoftext|> in scraped text) does not count."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates ("default", "tool_use")
        template = " ".join(t for t in template.values() if isinstance(t, str))
    if not isinstance(template, str) or not template:
        return False
    bos = getattr(tokenizer, "bos_token", None)
    return any(s in template or (s == bos and "bos_token" in template) for s in written_special_tokens(tokenizer, text))


def written_special_tokens(tokenizer, text: str) -> list[str]:
    """The tokenizer's special tokens written out in `text`, each once."""
    return [s for s in dict.fromkeys(getattr(tokenizer, "all_special_tokens", None) or []) if s and s in text]


def trained_special_tokens(loaded) -> str | None:
    """How the SAE's training read special tokens written out in its documents ("text" or "match"), as
    its saesteer.json records (`data.text.special_tokens`, kept on an SAE read from its folder as
    `trained_special_tokens`, as the web app holds it); None where it does not (another library's
    SAE, or one trained here before it was recorded)."""
    prov = loaded if isinstance(loaded, dict) else getattr(loaded, "provenance", None)
    got = (((prov or {}).get("data") or {}).get("text") or {}).get("special_tokens")
    if got is None and not isinstance(loaded, dict):  # an SAE read from its folder keeps it (saes.io.sae_from_folder)
        got = getattr(getattr(loaded, "sae", loaded), "trained_special_tokens", None)
    return got if got in ("text", "match") else None
