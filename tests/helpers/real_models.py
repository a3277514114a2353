"""Tiny checkpoints of real architectures (GPT-2, GPT-NeoX, Llama with GQA, Qwen2, Mistral) and a corpus of
real text, built locally and seeded, as a user's own model and data would be:

    from helpers.real_models import write_corpus, save_real_model
    corpus = write_corpus(tmp / "corpus")            # Corpus: train/validation/test jsonl + a .txt folder
    path = save_real_model(tmp / "llama", "llama", corpus)   # config.json + model.safetensors + tokenizer
    path = save_arch_model(tmp / "mixtral", "mixtral", tok)  # untrained, any architecture of its table
    path = arch_models(tmp, tok, trained_norms=True)("flex_olmo")  # built on first use, norm gains far from 1

The corpus is Python source (stdlib modules, read from this interpreter's own library) and prose
(the Python reference's topic texts from `pydoc_data`, the Python licence, a Unicode
table with accented, Greek and CJK letters), plus a tab-separated table and a minified-JSON line
(tabs and very long lines), split by document into train, validation and test. Each model gets a
tokenizer trained on the train split in the style of its family (special tokens, BOS,
pre-tokenizer): byte-level BPE, but for Mistral SentencePiece-style as Mistral-7B's and Llama-2's
are ("▁" for spaces, <0xNN> byte fallback for rare characters, <s> added by the tokenizer, the
[INST] chat template: `helpers.text_tokenizers.sentencepiece_bpe`). Each model gets some
language-model training on it (`train_steps`: a few seconds), so that its features are not pure
noise. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ARCHITECTURES = ("gpt2", "neox", "llama", "qwen2", "mistral")

# stdlib modules present in every CPython 3.9+ (read in this order; one document per module)
CODE_MODULES = (
    "argparse", "textwrap", "csv", "difflib", "heapq", "string", "shlex", "fractions", "statistics", "pprint",
    "calendar", "bisect", "fnmatch", "glob", "graphlib", "colorsys", "numbers", "operator", "keyword",
    "json/__init__", "json/decoder", "json/encoder", "json/scanner", "json/tool", "html/__init__", "html/parser",
    "urllib/parse", "email/utils", "email/quoprimime", "email/base64mime", "logging/__init__", "queue",
    "sched", "secrets", "stat", "struct", "tabnanny", "this", "token", "uu", "wave", "zipapp",
)
HELD_OUT_EVERY = 7  # document i goes to validation when i % 7 == 3, to test when i % 7 == 5


@dataclass(frozen=True)
class Corpus:
    root: Path
    jsonl_dir: Path  # test.jsonl, train.jsonl, validation.jsonl (test sorts first, as on the hub)
    txt_dir: Path  # one .txt file per training document
    train_docs: tuple[str, ...]
    validation_docs: tuple[str, ...]
    test_docs: tuple[str, ...]


def corpus_documents() -> list[str]:
    """Code and prose documents, in a fixed order (deterministic for a given Python version)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for name in CODE_MODULES:
        path = lib / f"{name}.py"
        if path.is_file():
            docs.append(path.read_text(encoding="utf-8"))
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    docs += [topics[k].strip() for k in sorted(topics) if len(topics[k].strip()) > 200]
    licence = lib / "LICENSE.txt"
    if licence.is_file():
        docs += [p.strip() for p in licence.read_text(encoding="utf-8").split("\n\n\n") if len(p.strip()) > 200]
    # non-ASCII prose: characters from the Unicode database (multi-byte pieces for byte-level BPE)
    import unicodedata

    chars = [chr(c) for c in (*range(0xE0, 0x100), *range(0x3B1, 0x3CA), *range(0x4E00, 0x4E40), 0x2019, 0x2026)]
    docs.append("\n".join(f"{ch} is {unicodedata.name(ch, 'unnamed').lower()}." for ch in chars))
    # a tab-separated table and one long minified JSON line (no line breaks)
    rows = [f"{name}\t{len(text.splitlines())}\t{len(text)}" for name, text in zip(CODE_MODULES, docs)]
    docs.append("module\tlines\tchars\n" + "\n".join(rows))
    docs.append(json.dumps({k: len(v) for k, v in sorted(topics.items())}, separators=(",", ":")))
    return docs


def split_documents(docs: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(train, validation, test): a spread of code and prose in each."""
    which = [{3: "validation", 5: "test"}.get(i % HELD_OUT_EVERY, "train") for i in range(len(docs))]
    return tuple([d for d, w in zip(docs, which) if w == split] for split in ("train", "validation", "test"))


def write_corpus(directory) -> Corpus:
    """test.jsonl / train.jsonl / validation.jsonl under jsonl/, and txt/ with one file per training
    document."""
    root = Path(directory)
    train, validation, test = split_documents(corpus_documents())
    jsonl_dir, txt_dir = root / "jsonl", root / "txt"
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    txt_dir.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", train), ("validation", validation), ("test", test)):
        with open(jsonl_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"text": d, "id": f"{split}-{i}"}) + "\n")
    for i, d in enumerate(train):
        (txt_dir / f"doc{i:04d}.txt").write_text(d, encoding="utf-8")
    return Corpus(root, jsonl_dir, txt_dir, tuple(train), tuple(validation), tuple(test))


def write_paragraph_splits(corpus: Corpus, directory, limit: int = 400) -> Path:
    """A local dataset of the corpus's paragraphs as documents (train.jsonl, validation.jsonl; up to `limit`
    each): shorter than a context, so that packed contexts hold the EOS between documents."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split, docs in (("train", corpus.train_docs), ("validation", corpus.validation_docs)):
        pieces = [p.strip() for d in docs for p in d.split("\n\n") if len(p.strip()) > 20]
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in pieces[:limit]),
                                             encoding="utf-8")
    return root


def write_jsonl_splits(directory, docs) -> Path:
    """A local dataset a user points --dataset at: train.jsonl of `docs` and validation.jsonl of them reversed."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", docs), ("validation", docs[::-1])):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part), encoding="utf-8")
    return root


# ----------------------------------------------------------------------------------------------
# tokenizers: byte-level BPE in each family's style

# the pre-tokenizer regexes of Llama 3 and Qwen2 (digits in groups of 1-3 / one by one)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

FAMILY_TOKENS = {
    # specials (first gets id 0, ...), bos, eos, pad, unk
    "gpt2": dict(specials=["<|endoftext|>"], bos="<|endoftext|>", eos="<|endoftext|>", pad=None,
                 unk="<|endoftext|>"),
    "neox": dict(specials=["<|endoftext|>", "<|padding|>"], bos="<|endoftext|>", eos="<|endoftext|>",
                 pad="<|padding|>", unk="<|endoftext|>"),
    # Llama 3: the tokenizer itself prepends <|begin_of_text|> (a post-processor)
    "llama": dict(specials=["<|begin_of_text|>", "<|end_of_text|>"], bos="<|begin_of_text|>",
                  eos="<|end_of_text|>", pad=None, unk=None),
    # Llama-3-Instruct as first published: the turn markers special, the tokenizer's eos still
    # <|end_of_text|> (generation_config.json lists <|eot_id|> beside it), the template writes BOS
    # (helpers.chat_templates.LLAMA3_TEMPLATE) and the tokenizer prepends one too
    "llama3": dict(specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|end_of_text|>", pad=None, unk=None),
    # Qwen2: no BOS token at all; chat markers are special tokens
    "qwen2": dict(specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|endoftext|>",
                  pad="<|endoftext|>", unk=None),
    # Gemma 2 / 3 (a tokenizer only: no tiny Gemma checkpoint here): its special tokens and ids, BOS
    # prepended by the tokenizer, turn markers special, the Gemma 3 chat template (GEMMA3_CHAT_TEMPLATE)
    "gemma": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>",
                  eos="<eos>", pad="<pad>", unk="<unk>"),
}

# The chat templates of Gemma 3 (-it) and Gemma 2 (-it) as Google publishes them in
# tokenizer_config.json. Gemma 3 has no system turn: it writes the system message at the head of the
# first user turn; Gemma 2 refuses a system message.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
GEMMA2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def build_family_tokenizer(family: str, texts, vocab_size: int = 1024):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family == "mistral":  # SentencePiece style; characters outside the 110 most frequent are bytes
        from helpers.chat_templates import MISTRAL_INSTRUCT_TEMPLATE
        from helpers.text_tokenizers import sentencepiece_bpe

        return sentencepiece_bpe(vocab_size, tuple(texts), add_bos=True, max_alphabet=110,
                                 chat_template=MISTRAL_INSTRUCT_TEMPLATE, model_max_length=CONTEXT)
    spec = FAMILY_TOKENS[family]
    tok = Tokenizer(models.BPE())
    if family in ("llama", "llama3", "qwen2"):
        pattern = _QWEN2_SPLIT if family == "qwen2" else _LLAMA3_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=spec["specials"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if family in ("llama", "llama3", "gemma"):
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = {k + "_token": spec[k] for k in ("bos", "eos", "pad", "unk") if spec[k] is not None}
    extra = [s for s in spec["specials"] if s not in kwargs.values()]
    if extra:
        kwargs["additional_special_tokens"] = extra
    if family == "gemma":
        kwargs["chat_template"] = GEMMA3_CHAT_TEMPLATE
    if family == "llama3":
        from helpers.chat_templates import LLAMA3_TEMPLATE

        kwargs["chat_template"] = LLAMA3_TEMPLATE
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   model_max_length=CONTEXT, **kwargs)


# ----------------------------------------------------------------------------------------------
# models

CONTEXT = 128  # max positions of every model
D_MODEL = 64
SLIDING_WINDOW = 64  # Mistral's attention window


def _config(family: str, tok, d_model: int = D_MODEL, n_layers: int = 2, model_vocab: int | None = None):
    """`d_model`, `n_layers` and `model_vocab` (an embedding padded past the tokenizer, as GPT-2's
    50257 rows or Pythia's are) are for the GPT-2 family: a GPT-2-small-shaped model for the scale
    benchmarks has d_model 768, 12 heads of 64; `d_model` and `n_layers` also shape the Llama family
    (heads of 64, 2 key/value heads: the cache estimate's benchmark)."""
    import transformers

    if family not in ("gpt2", "llama") and (d_model, n_layers, model_vocab) != (D_MODEL, 2, None):
        raise ValueError("d_model and n_layers are for the gpt2 and llama families only, model_vocab for gpt2 only")
    if family == "llama" and model_vocab is not None:
        raise ValueError("model_vocab is for the gpt2 family only")
    common = dict(vocab_size=model_vocab or len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=max(4, d_model // 64),
                                       n_positions=CONTEXT, n_ctx=CONTEXT, **common)
    if family == "neox":
        return transformers.GPTNeoXConfig(hidden_size=D_MODEL, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=4 * D_MODEL, rotary_pct=0.25,
                                          max_position_embeddings=CONTEXT, use_parallel_residual=True,
                                          tie_word_embeddings=False, **common)
    if family in ("llama", "llama3"):  # grouped-query attention: 4 query heads share 2 key/value heads
        return transformers.LlamaConfig(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                                        num_attention_heads=max(4, d_model // 64), num_key_value_heads=2,
                                        max_position_embeddings=CONTEXT, tie_word_embeddings=False, **common)
    if family == "qwen2":
        return transformers.Qwen2Config(hidden_size=D_MODEL, intermediate_size=2 * D_MODEL, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=CONTEXT, tie_word_embeddings=True, **common)
    if family == "mistral":  # grouped-query attention and a sliding window shorter than the context
        return transformers.MistralConfig(hidden_size=D_MODEL, intermediate_size=2 * D_MODEL, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, sliding_window=SLIDING_WINDOW,
                                          max_position_embeddings=CONTEXT, tie_word_embeddings=False, **common)
    raise ValueError(f"unknown family {family!r}; one of {ARCHITECTURES}")


def _causal_lm_class(family: str):
    import transformers

    return {"gpt2": transformers.GPT2LMHeadModel, "neox": transformers.GPTNeoXForCausalLM,
            "llama": transformers.LlamaForCausalLM, "llama3": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
            "mistral": transformers.MistralForCausalLM}[family]


def _train_briefly(model, tok, texts, steps: int, seed: int, batch: int = 8, length: int = 64) -> list[float]:
    """A few hundred AdamW steps of next-token prediction on random windows of the texts."""
    import torch

    # whole documents, cut into windows here (verbose=False: no "longer than the maximum" warning)
    ids = [i for t in texts for i in tok(t, add_special_tokens=False, verbose=False)["input_ids"] + [tok.eos_token_id]]
    stream = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - length - 1, (batch,), generator=g)
        x = torch.stack([stream[s:s + length] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def save_real_model(directory, family: str, corpus: Corpus, train_steps: int = 200, seed: int = 0,
                    vocab_size: int = 1024, **shape) -> Path:
    """config.json + model.safetensors + tokenizer files of a tiny `family` checkpoint in `directory`
    (`shape`: d_model, n_layers, model_vocab of `_config`, for a bigger GPT-2)."""
    import torch

    directory = Path(directory)
    tok = build_family_tokenizer(family, corpus.train_docs, vocab_size)
    torch.manual_seed(seed)
    model = _causal_lm_class(family)(_config(family, tok, **shape))
    if family == "llama3":  # generation_config.json as Llama-3-Instruct ships it: a reply ends at <|eot_id|> too
        model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")]
    if train_steps:
        losses = _train_briefly(model, tok, corpus.train_docs, train_steps, seed)
        (directory).mkdir(parents=True, exist_ok=True)
        (directory / "train_losses.json").write_text(json.dumps(losses))
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    if family == "mistral":
        _as_mistral_ships_it(directory)
    return directory


def _as_mistral_ships_it(directory: Path) -> None:
    """tokenizer_config.json in the shape of Mistral-7B-Instruct's on the hub: LlamaTokenizer,
    add_bos_token true, and the chat template inline (transformers 5 writes it to chat_template.jinja)."""
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    template = directory / "chat_template.jinja"
    cfg.update(tokenizer_class="LlamaTokenizer", add_bos_token=True, add_eos_token=False, legacy=False,
               chat_template=template.read_text())
    template.unlink()
    path.write_text(json.dumps(cfg, indent=2))


# directory names: TransformerLens's HookedTransformer loader picks the architecture from the
# *name* when it contains "llama" (and then fails on a local directory), so the Llama checkpoint
# lives in "gqa-model"; saesteer itself does not care about names.
DIR_NAMES = {"gpt2": "gpt2-model", "neox": "neox-model", "llama": "gqa-model", "llama3": "gqa-instruct-model",
             "qwen2": "qwen2-model",
             "mistral": "mistral-model"}


class RealModels:
    """Checkpoints built on first use under `root` (one per family and training length)."""

    def __init__(self, root, corpus: Corpus) -> None:
        self.root = Path(root)
        self.corpus = corpus
        self._paths: dict[tuple[str, int], Path] = {}

    def path(self, family: str, train_steps: int = 60) -> Path:
        key = (family, train_steps)
        if key not in self._paths:
            name = DIR_NAMES[family] + ("" if train_steps == 60 else f"-{train_steps}")
            self._paths[key] = save_real_model(self.root / name, family, self.corpus, train_steps=train_steps)
        return self._paths[key]


def hooked_sae_transformer(path, *, fold_ln: bool = False, center_writing_weights: bool = False,
                           center_unembed: bool = False, fold_value_biases: bool = False):
    """SAELens's HookedSAETransformer with the weights of the local checkpoint at `path`, processed
    as asked (HookedTransformer.from_pretrained accepts only official hub names, so this does its
    steps: TransformerLens's config and weight conversion, then `load_and_process_state_dict`), less
    the flags `from_pretrained` itself leaves out for the model (`saes.processing.skipped_flags`:
    e.g. fold_ln on a post-norm OLMo-2/3, which load_and_process_state_dict alone would fold).
    The defaults load the raw weights (`from_pretrained_no_processing`)."""
    import warnings

    from sae_lens import HookedSAETransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saes.processing import skipped_flags

    path = str(path)
    asked = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
                 fold_value_biases=fold_value_biases)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(path)
        cfg = loading.get_pretrained_model_config(path, fold_ln=fold_ln, device="cpu")
        skipped = skipped_flags(cfg) or set()
        state = loading.get_pretrained_state_dict(path, cfg, hf)
        model = HookedSAETransformer(cfg, AutoTokenizer.from_pretrained(path), move_to_device=False)
        model.load_and_process_state_dict(state, **{flag: on and flag not in skipped for flag, on in asked.items()})
    return model.eval()


def olmo3_checkpoint(directory, tok) -> Path:
    """A tiny OLMo-3 checkpoint (RMSNorm after each sublayer; TransformerLens's HookedTransformer
    converts it from a local directory, as it does not OLMo-2) with norm gains far from 1, so that
    folding them would show."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Olmo3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=128, initializer_range=0.15,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    hf = transformers.Olmo3ForCausalLM(cfg)
    spread_norm_weights(hf)
    hf.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return Path(directory)


def spread_norm_weights(hf) -> None:
    """Norm gains far from 1, as a trained model's are (a fresh one's are all 1, which hides a hook read
    before the gain is applied from one read after it). Norms are found by type, not by name: GPT-2's
    and GPT-J's are `ln_1`/`ln_2`/`ln_f`."""
    import torch

    def is_norm(module) -> bool:  # nn.LayerNorm, and each family's own RMSNorm/LayerNorm class
        return isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower()

    with torch.no_grad():
        for module_name, module in hf.named_modules():
            if not is_norm(module):
                continue
            for name, p in module.named_parameters(prefix=module_name, recurse=False):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))


def save_arch_model(directory: Path, arch: str, tok, *, trained_norms: bool = False) -> Path:
    """A randomly initialised tiny checkpoint of `arch` (wide enough initial weights that sampled text
    and log-probs vary), saved with its tokenizer; `trained_norms`: norm gains far from 1
    (`spread_norm_weights`)."""
    import torch
    import transformers

    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, initializer_range=0.15)
    gqa = dict(num_key_value_heads=2)
    configs = {  # (config class, model class, extra settings)
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(gqa, head_dim=16, sliding_window=16,
                                                              attn_logit_softcapping=50.0, final_logit_softcapping=5.0)),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(gqa, head_dim=16, sliding_window=16)),
        "phi": ("PhiConfig", "PhiForCausalLM", dict(partial_rotary_factor=0.5)),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(gqa, head_dim=16)),
        "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(gqa)),
        # a hybrid: gated delta-net layers (their cache keeps per-row states, no keys/values) and attention,
        # as Qwen3.5 stacks them: delta-net layers before and after an attention layer (HF's cache gives
        # no length at a delta-net layer past the first)
        "qwen3_5": ("Qwen3_5TextConfig", "Qwen3_5ForCausalLM", dict(
            gqa, head_dim=16, num_hidden_layers=4,
            layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
            linear_num_key_heads=2,
            linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)),
        # Llama-3.1/3.2: RoPE frequencies rescaled past an original context ("llama3" rope type), embeddings tied
        "llama3_1": ("LlamaConfig", "LlamaForCausalLM", dict(gqa, tie_word_embeddings=True, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=32))),
        # Phi-3/Phi-4: joint qkv and gate_up projections, GQA (Phi-4-mini), a "longrope"-free short variant
        "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(gqa, original_max_position_embeddings=128)),
        # Mixtral: a mixture of experts for every MLP (4 experts, 2 per token), sliding window off
        "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(gqa, num_local_experts=4, num_experts_per_tok=2)),
        "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
            gqa, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)),
        # Qwen2-MoE: shared and routed experts; layer 0 a dense MLP (`mlp_only_layers`), as DeepSeek's first layers
        "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
            gqa, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=64,
            mlp_only_layers=[0])),
        "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2)),
        # FlexOlmo: OLMoE's experts in OLMo-2's post-norm blocks (ln2 norms the experts' output, not their input)
        "flex_olmo": ("FlexOlmoConfig", "FlexOlmoForCausalLM", dict(num_experts=4, num_experts_per_tok=2)),
        # Granite-MoE: Granite's multipliers around a mixture of experts (the block scales the experts' output)
        "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(
            num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=4.0, residual_multiplier=0.5,
            attention_multiplier=0.25, logits_scaling=2.0)),
        # GPT-2: learned absolute positions; its tokenizer's BOS, EOS and pad are one token (<|endoftext|>)
        "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, n_ctx=128)),
        # GPT-J: parallel attention and MLP off one LayerNorm, rotary on part of each head (its own names)
        "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=128,
                                                        n_positions=128)),
        # Granite: HF scales each sublayer's output before the residual add (the Bridge's hook_mlp_out is the
        # scaled one), and scales embeddings, attention and logits by its own multipliers
        "granite": ("GraniteConfig", "GraniteForCausalLM", dict(gqa, embedding_multiplier=4.0, residual_multiplier=0.25,
                                                               attention_multiplier=0.25, logits_scaling=2.0)),
        "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(gqa, no_rope_layer_interval=2)),
        "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(gqa, sliding_window=None)),
        # gpt-oss: experts with a clamped SwiGLU, attention sinks, sliding and full attention layers alternating
        "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(gqa, head_dim=16, num_local_experts=4,
                                                           num_experts_per_tok=2, sliding_window=16)),
        # Falcon (7B's layout): attention and MLP in parallel off one LayerNorm, multi-query attention; its
        # modules named self_attention / mlp / input_layernorm, as Bloom's
        "falcon": ("FalconConfig", "FalconForCausalLM", dict(alibi=False)),
        # Falcon-RW's layout: attention, then post_attention_layernorm and the MLP in sequence
        "falcon_seq": ("FalconConfig", "FalconForCausalLM", dict(parallel_attn=False, alibi=False)),
        # Bloom: ALiBi; its attention and MLP modules add the residual stream themselves (dropout_add)
        "bloom": ("BloomConfig", "BloomForCausalLM", dict(n_layer=2, n_head=4)),
        # Gemma-4 (text): per-layer input embeddings off, sliding and full layers, a final logit soft-cap
        "gemma4": ("Gemma4TextConfig", "Gemma4ForCausalLM", dict(
            gqa, head_dim=16, sliding_window=16, final_logit_softcapping=30.0, hidden_size_per_layer_input=0,
            layer_types=["sliding_attention", "full_attention"])),
    }
    cfg_name, model_name, extra = configs[arch]
    if arch == "bloom":  # its config names its depth and heads itself
        common = {k: v for k, v in common.items() if k not in ("num_hidden_layers", "num_attention_heads",
                                                            "intermediate_size", "max_position_embeddings")}
    if arch in ("gptj", "gpt2"):  # their configs name their widths themselves
        common = {k: v for k, v in common.items() if k in ("vocab_size", "bos_token_id", "eos_token_id",
                                                            "pad_token_id", "initializer_range")}
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**{**common, **extra}))
    if trained_norms:
        spread_norm_weights(model)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def arch_models(root: Path, tok, **kw):
    """`path(arch)`: `save_arch_model(root / arch, arch, tok, **kw)`, built the first time it is asked for."""
    made: dict[str, Path] = {}

    def path(arch: str) -> Path:
        if arch not in made:
            made[arch] = save_arch_model(Path(root) / arch, arch, tok, **kw)
        return made[arch]

    return path


def widen_vocab(tok, vocab_size: int, seed: int = 0):
    """`tok` (a byte-level BPE of `build_family_tokenizer`) grown to `vocab_size` entries, as a real
    model's tokenizer is (GPT-2 50,257, Llama-3 128,256, Qwen2 151,936, Gemma 256,000): merges of two
    tokens it already has, appended after its own (lower priority), so text still tokenizes and the
    merges a corpus meets put ids all over the vocabulary. Its specials keep their ids."""
    import json
    import random

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    as_pairs = bool(merges) and isinstance(merges[0], list)
    specials = {a["content"] for a in spec["added_tokens"]}
    pieces = [p for p in vocab if p not in specials]
    rng, next_id = random.Random(seed), max(vocab.values()) + 1
    while next_id < vocab_size:
        a, b = rng.choice(pieces), rng.choice(pieces)
        if len(a) + len(b) > 16 or a + b in vocab:
            continue
        vocab[a + b] = next_id
        merges.append([a, b] if as_pairs else f"{a} {b}")
        pieces.append(a + b)
        next_id += 1
    kw = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if getattr(tok, k) is not None}
    extra = [s for s in tok.all_special_tokens if s not in kw.values()]
    if extra:
        kw["additional_special_tokens"] = extra
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), clean_up_tokenization_spaces=False,
                                   model_max_length=tok.model_max_length, chat_template=tok.chat_template, **kw)
