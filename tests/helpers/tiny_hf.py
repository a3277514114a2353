"""A tiny GPT-2 checkpoint written locally (random weights, a byte-level BPE tokenizer trained on a
few sentences), for loading through `saesteer.models.load_model(path)` exactly as a hub model
would load. No downloads: everything is built here, seeded.

    from helpers.tiny_hf import save_tiny_gpt2
    path = save_tiny_gpt2(tmp_path / "tiny-gpt2")
"""

from __future__ import annotations

from pathlib import Path

EOT = "<|endoftext|>"
_TEXT = [
    "anna saw two red boats near the reef .",
    "the crabs swim in the deep harbour .",
    "did tom find the green shell ?",
    '" look at the whale ! " mia shouted .',
    "there were five old anchors on the shore .",
]


def build_bpe_tokenizer(vocab_size: int = 300):
    """A GPT-2 style byte-level BPE tokenizer trained on a few sentences (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                   clean_up_tokenization_spaces=False)


def save_tiny_gpt2(directory, n_layer: int = 2, n_embd: int = 32, n_head: int = 2, n_positions: int = 64,
                   seed: int = 0) -> Path:
    """Write config.json + model.safetensors + tokenizer files of a random tiny GPT-2 into `directory`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    tok = build_bpe_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory


def hf_logits(directory, input_ids):
    """Logits of the saved checkpoint run by plain `transformers` (eager attention), for comparison."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(input_ids).logits


def cached_hub_dataset(cache_dir, repo_id: str, configs: dict, column: str = "content") -> None:
    """A hub dataset with several configurations as `datasets` leaves it in its cache once loaded
    (HF_DATASETS_CACHE/<org>___<name>/<config>/0.0.0/<hash>/<name>-<split>.arrow + dataset_info.json),
    which it reads offline: `configs` = {config: {split: [text]}}, the text in `column`."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    name = repo_id.split("/")[-1]
    features = datasets.Features({column: datasets.Value("string")})
    for config, splits in configs.items():
        folder = Path(cache_dir) / repo_id.replace("/", "___") / config / "0.0.0" / ("0" * 16)
        folder.mkdir(parents=True)
        infos = datasets.SplitDict(dataset_name=name)
        for split, docs in splits.items():
            with ArrowWriter(features=features, path=str(folder / f"{name}-{split}.arrow")) as w:
                for doc in docs:
                    w.write({column: doc})
                n, size = w.finalize()
            infos.add(datasets.SplitInfo(name=split, num_examples=n, num_bytes=size, dataset_name=name))
        datasets.DatasetInfo(features=features, config_name=config, dataset_name=name, builder_name=name,
                             splits=infos).write_to_directory(str(folder))
