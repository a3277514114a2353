"""A sixteenth user path: the training data of an SAE user as they keep it, through the CLI (`cache`,
`train`, `eval`) on the tiny GPT-2 of tests/helpers/real_models.py (byte-level BPE, BOS = EOS).

- Pretokenized datasets, as SAELens's own `PretokenizeRunner` writes them (a `save_to_disk` folder with
  an `input_ids` column and `sae_lens.json` naming the tokenizer, context size and BOS / separator
  settings), and as the hub publishes them (parquet under data/, a `tokens` column, as
  NeelNanda/pile-small-tokenized-2b; apollo-research/Skylion007-openwebtext-tokenizer-gpt2's is
  `input_ids`): they were refused ("no column 'text'", or with --text-column input_ids "column
  'input_ids' is list, not text"). Now each row is one context, cached exactly as stored (no second
  BOS, nothing re-tokenized), and the manifest records the column, the row width, the SAELens
  settings and the BOS policy; `eval` re-reads the recorded split of the same rows.
- What the rows hold between documents: SAELens's separator (default: BOS) and, with a Llama / Mistral
  tokenizer, each document's own BOS. The manifest recorded the --separator flag (default eos) instead,
  a --separator given was ignored and recorded, and eval packed text for the SAE with EOS between
  documents. Now it is read from sae_lens.json (as SAELens's own code puts it there), "rows" when
  unknown; a --separator that contradicts the rows is refused naming both; eval packs text with the
  recorded one (a new `bos` separator), and asks for --separator when it is "rows".
- Rows made by another tokenizer are refused naming both sides: by `sae_lens.json`'s tokenizer
  (vocabulary compared), by ids outside the model's vocabulary, and, without metadata, because they
  do not decode and encode back to themselves under the model's tokenizer.
- The BOS policy asked for must be the rows': rows without a BOS first are refused under the default
  `prepend` (the fix named), read under `none`; rows with one are refused under `none`; a
  --context-length longer than the rows is refused, a shorter one reads each row's start.
- A hub dataset of several configurations read offline from the `datasets` cache (wikitext's
  wikitext-2-raw-v1 beside wikitext-103-raw-v1): the SAE trained from the cache recorded the dataset
  and split but not the configuration, so once the cache was deleted `eval` failed ("multiple
  'wikitext' configurations in the cache"). It now records how its text was read, as training without
  a cache does, and eval reads the same configuration's validation split (CE equal to training's).
- A big dataset and a small cache: the estimate sampled 512 documents and the build tokenized 256 at
  a time, so a few contexts of book-length documents parsed and tokenized megabytes (a malformed
  line far past what was needed failed the command). Documents are now read 16 at a time, in chunks
  that end past 1M characters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers.real_cli import saesteer

pytestmark = [pytest.mark.usefixtures("one_thread", "offline_env")]

HOOK = "blocks.0.hook_resid_post"
L = 32  # the rows' width (SAELens's context_size)
USER_TEXT = [
    "def parse(self, args=None):\n    \"\"\"Parse the arguments.\"\"\"\n    return self._parse(args or [])\n",
    "Le caf\u00e9 de la gare ouvre \u00e0 sept heures ; l'\u00e9t\u00e9, on y d\u00e9jeune dehors.",
    "\u6771\u4eac\u306e\u5929\u6c17\u306f\u6674\u308c\u3067\u3059\u3002 Tokyo is sunny today, said the report.",
]


def pretokenize(tokenizer_dir, docs: list[str], out: Path, **settings) -> Path:
    """`docs` pretokenized by SAELens's PretokenizeRunner into the `save_to_disk` folder `out`."""
    from sae_lens.config import PretokenizeRunnerConfig
    from sae_lens.pretokenize_runner import PretokenizeRunner

    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".jsonl")
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    cfg = PretokenizeRunnerConfig(tokenizer_name=str(tokenizer_dir), dataset_path="json", data_files=[str(src)],
                                  split="train", context_size=L, shuffle=False, num_proc=1, save_path=str(out),
                                  **settings)
    PretokenizeRunner(cfg).run()
    return out


def rows_of(folder: Path, column: str = "input_ids") -> np.ndarray:
    import datasets

    return np.asarray(datasets.load_from_disk(str(folder))[column], dtype=np.int64)


def cached_tokens(cache: Path) -> np.ndarray:
    from training.shardset import ShardSet

    shards = ShardSet(cache, HOOK)
    return np.concatenate([shards.read(i, ["context_tokens"])["context_tokens"].numpy()
                           for i in range(len(shards.shards))])


def cache(model, dataset, out, *flags):
    return saesteer("cache", "--model", model, "--dataset", dataset, "--context-length", L, "--max-tokens", 2048,
                    "--hooks", HOOK, "--out", out, "--no-progress", *flags)


@pytest.fixture(scope="module")
def user(real_models, real_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretok")
    model = real_models.path("gpt2")
    train = USER_TEXT + list(real_corpus.train_docs[:30])
    validation = list(real_corpus.validation_docs[:12])
    saved = {split: pretokenize(model, docs, work / f"pretok-{split}")
             for split, docs in (("train", train), ("validation", validation))}
    return SimpleNamespace(work=work, model=model, saved=saved, train=train, validation=validation)


def test_a_saelens_pretokenized_folder_is_cached_row_by_row_and_evaluated(user):
    """SAELens's defaults (BOS first in every row, BOS between documents): each cached context is one
    row, exactly (BOS once, at position 0); the manifest records the column, the width, SAELens's
    settings and the BOS policy; train and eval on the validation rows run through."""
    from transformers import AutoTokenizer

    work = user.work
    bos = AutoTokenizer.from_pretrained(user.model).bos_token_id
    cache(user.model, user.saved["train"], work / "cache").ok()
    manifest = json.loads((work / "cache/manifest.json").read_text())
    assert manifest["bos_policy"] == "prepend"
    ds = manifest["dataset"]
    assert ds["text_column"] == "input_ids" and ds["split"] == "train"
    assert ds["pretokenized"]["column"] == "input_ids" and ds["pretokenized"]["row_tokens"] == L
    assert ds["pretokenized"]["sae_lens"]["tokenizer_name"] == str(user.model)
    assert ds["pretokenized"]["sae_lens"]["begin_batch_token"] == "bos"
    assert manifest["separator"] == "eos"  # SAELens's "bos" separator: GPT-2's <|endoftext|>, its EOS too
    r = cache(user.model, user.saved["train"], work / "none", "--separator", "none").no_traceback()  # was recorded
    assert r.rc != 0 and "hold '<|endoftext|>' between documents" in r.err and "puts nothing there" in r.err, r.text
    got, rows = cached_tokens(work / "cache"), rows_of(user.saved["train"])
    assert got.shape == (2048 // L, L) and np.array_equal(got, rows[:len(got)])
    assert (got[:, 0] == bos).all() and (got[:, 1] != bos).all()  # one BOS, not two

    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 64,
             "--k", 4, "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4,
             "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", user.saved["validation"], "--contexts", 4,
             "--ce-contexts", 4, "--absorption", "false", "--probing", "false", "--quiet", "--out", work / "eval").ok()
    doc = json.loads((work / "eval/eval.json").read_text())
    assert doc["data"]["dataset"] == str(user.saved["validation"]) and doc["data"]["split"] == "train"
    assert doc["data"]["text_column"] == "input_ids"  # the column read, not the flag's default "text"
    assert doc["saes"]["sae"]["metrics"]["ce_loss_recovered"] > 0
    # the training rows as eval text: found to be training text (rows compared, not decoded text)
    r = saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", user.saved["train"], "--contexts", 4,
                 "--ce-contexts", 4, "--absorption", "false", "--probing", "false", "--quiet")
    assert r.rc != 0 and "is training text" in r.text, r.text


def test_the_rows_are_checked_in_the_dataset_already_opened(user, monkeypatch):
    """`text_as_read` finds the token column and checks the rows' separator from one opening of the
    dataset (a hub dataset's is a download or a stream), not a second `load_dataset` of it."""
    from transformers import AutoTokenizer

    from training.text import DocumentSource, TextConfig, text_as_read

    opened, load = [], DocumentSource._load
    monkeypatch.setattr(DocumentSource, "_load", lambda self: opened.append(self.cfg) or load(self))
    read = text_as_read(TextConfig(dataset=str(user.saved["train"]), context_length=L),
                        AutoTokenizer.from_pretrained(user.model), separator_given=False)
    assert read.text_column == "input_ids" and read.separator == "eos"  # SAELens's "bos": GPT-2's <|endoftext|>
    assert len(opened) == 1, opened


def test_a_command_opens_the_dataset_checks_the_rows_and_loads_saelens_tokenizer_once(user, monkeypatch):
    """`cache` reads the dataset it opened to find the column and the rows' separator (it opened it
    twice, and checked the rows twice); the estimate's own opening is on purpose (it reads while the
    build's prefetcher does). SAELens's tokenizer (sae_lens.json's) is loaded once per process:
    `train` checks the rows before and after its model loads (it loaded it for each check)."""
    import sys

    import transformers

    from training import pretokenized
    from training.text import DocumentSource

    opened, load = [], DocumentSource._load
    monkeypatch.setattr(DocumentSource, "_load", lambda self: opened.append(self.cfg) or load(self))
    checks, check = [], pretokenized.check_token_rows
    monkeypatch.setattr(pretokenized, "check_token_rows", lambda *a: checks.append(a[0]) or check(*a))
    saelens_loads, from_pretrained = [], transformers.AutoTokenizer.from_pretrained

    def counted(name, *a, **kw):
        if sys._getframe(1).f_code.co_name == "_tokenizer_as_saved":
            saelens_loads.append(name)
        return from_pretrained(name, *a, **kw)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counted)
    pretokenized._tokenizer_as_saved.cache_clear()
    cache(user.model, user.saved["train"], user.work / "once").ok()
    assert len(opened) == 2 and len(checks) == 1 and saelens_loads == [str(user.model)], (opened, checks)
    assert json.loads((user.work / "once/manifest.json").read_text())["separator"] == "eos"
    pretokenized._tokenizer_as_saved.cache_clear()
    saelens_loads.clear()
    saesteer("train", "--model", user.model, "--dataset", user.saved["train"], "--context-length", L, "--hook", HOOK,
             "--out", user.work / "once-run", "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 512,
             "--batch-size", 256, "--holdout-tokens", 256, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0,
             "--model-eval", "false", "--no-progress", "--sae-name", "sae").ok()
    assert saelens_loads == [str(user.model)]


def test_training_without_a_cache_records_the_column_it_read(user):
    """`train --model M --dataset <pretokenized folder>` (no cache): the SAE records how its text was
    read (data.text) with the token column read, not the flag's default "text"."""
    work = user.work / "live"
    saesteer("train", "--model", user.model, "--dataset", user.saved["train"], "--context-length", L, "--hook", HOOK,
             "--out", work / "run", "--architecture", "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 512,
             "--batch-size", 128, "--holdout-tokens", 128, "--eval-ce-contexts", 0, "--eval-every-tokens", 0,
             "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    data = json.loads((work / "run/saes/sae/saesteer.json").read_text())["data"]
    assert data["text"]["text_column"] == "input_ids", data["text"]


def test_hub_parquet_rows_are_read_and_eval_rereads_the_recorded_split(user):
    """The hub's layout (data/train-*.parquet, data/validation-*.parquet, a `tokens` column, no
    sae_lens.json, one in the folder above it): cached as rows; `eval` given only the SAE reads split validation of the same
    folder (as recorded), rows again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo, work = user.work / "hub" / "repo", user.work / "hub-out"
    (repo / "data").mkdir(parents=True)
    # another dataset's metadata in a folder above the one given is not this dataset's
    (repo.parent / "sae_lens.json").write_text(json.dumps({"tokenizer_name": "someone/other-tokenizer"}))
    for split, folder in user.saved.items():
        pq.write_table(pa.table({"tokens": rows_of(folder).tolist()}), repo / "data" / f"{split}-00000-of-00001.parquet")
    cache(user.model, repo, work / "cache").ok()
    manifest = json.loads((work / "cache/manifest.json").read_text())
    assert manifest["dataset"]["text_column"] == "tokens" and "sae_lens" not in manifest["dataset"]["pretokenized"]
    assert np.array_equal(cached_tokens(work / "cache"), rows_of(user.saved["train"])[:2048 // L])
    saesteer("train", "--cache", work / "cache", "--out", work / "run", "--architecture", "topk", "--d-sae", 64,
             "--k", 4, "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4,
             "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    saesteer("eval", "--sae", work / "run/saes/sae", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", work / "eval").ok()
    doc = json.loads((work / "eval/eval.json").read_text())
    assert (doc["data"]["dataset"], doc["data"]["split"], doc["data"]["text_column"]) == (str(repo), "validation", "tokens")


def test_rows_of_another_tokenizer_are_refused_naming_both(user, real_corpus):
    """Rows SAELens made with another tokenizer: refused by sae_lens.json's tokenizer (another
    vocabulary: both named), without it because they do not read back as the model's tokens, and
    ids beyond the model's vocabulary as such. Never cached as garbage."""
    from helpers.real_models import build_family_tokenizer

    work = user.work / "foreign"
    other = work / "neox-tokenizer"
    build_family_tokenizer("neox", real_corpus.train_docs).save_pretrained(other)
    foreign = pretokenize(other, user.train, work / "pretok")
    r = cache(user.model, foreign, work / "c1").no_traceback()
    assert r.rc != 0 and f"tokenized with {str(other)!r}" in r.err and str(user.model) in r.err, r.text
    assert "vocabulary differs" in r.err and not (work / "c1/manifest.json").exists()

    (foreign / "sae_lens.json").unlink()
    r = cache(user.model, foreign, work / "c2").no_traceback()
    assert r.rc != 0 and "does not read as text tokenized by the model's tokenizer" in r.err, r.text
    assert str(user.model) in r.err and "sae_lens.json" in r.err

    bigger = work / "big-tokenizer"
    build_family_tokenizer("gpt2", real_corpus.train_docs, vocab_size=2048).save_pretrained(bigger)
    big = pretokenize(bigger, user.train, work / "pretok-big")
    (big / "sae_lens.json").unlink()
    r = cache(user.model, big, work / "c3").no_traceback()
    assert r.rc != 0 and "outside the model's tokenizer" in r.err and "ids 0..1023" in r.err, r.text


def test_the_tokenizer_sae_lens_json_names_is_read_as_it_is_on_disk_now(user, real_corpus):
    """The tokenizer sae_lens.json names is loaded once per process, but as its folder is now: refused
    because it could not be loaded ("put it in the HF cache, or ..."), then put there, the same
    process (a notebook) refused again; a folder written anew with another tokenizer was compared
    by the vocabulary first loaded."""
    from transformers import AutoTokenizer

    from helpers.real_models import build_family_tokenizer

    work = user.work / "named-tokenizer"
    rows = work / "pretok"
    shutil.copytree(user.saved["train"], rows)
    named = work / "saelens-tokenizer"
    meta = json.loads((rows / "sae_lens.json").read_text())
    (rows / "sae_lens.json").write_text(json.dumps({**meta, "tokenizer_name": str(named)}))
    r = cache(user.model, rows, work / "c1").no_traceback()
    assert r.rc != 0 and "cannot be loaded here" in r.err, r.text
    AutoTokenizer.from_pretrained(user.model).save_pretrained(named)
    cache(user.model, rows, work / "c2").ok()
    shutil.rmtree(named)
    build_family_tokenizer("neox", real_corpus.train_docs).save_pretrained(named)
    r = cache(user.model, rows, work / "c3").no_traceback()
    assert r.rc != 0 and "vocabulary differs" in r.err and not (work / "c3/manifest.json").exists(), r.text


def test_the_bos_policy_must_be_the_rows(user):
    """SAELens run with begin_batch_token=None (no BOS first): the default --bos-policy prepend is
    refused naming the fix (a BOS would have to be added, or the policy recorded falsely), --bos-policy
    none caches the rows as stored and records it; rows with BOS first are refused under none. A
    --context-length longer than the rows is refused; a shorter one caches each row's start."""
    work = user.work / "bos"
    plain = pretokenize(user.model, user.train, work / "pretok", begin_batch_token=None,
                        sequence_separator_token="eos")
    r = cache(user.model, plain, work / "c1").no_traceback()
    assert r.rc != 0 and "do not all start with BOS" in r.err and "--bos-policy none" in r.err, r.text
    cache(user.model, plain, work / "c2", "--bos-policy", "none").ok()
    assert json.loads((work / "c2/manifest.json").read_text())["bos_policy"] == "none"
    assert np.array_equal(cached_tokens(work / "c2"), rows_of(plain)[:2048 // L])

    r = cache(user.model, user.saved["train"], work / "c3", "--bos-policy", "none").no_traceback()
    assert r.rc != 0 and "every row starts with BOS" in r.err and "--bos-policy prepend" in r.err, r.text
    r = saesteer("cache", "--model", user.model, "--dataset", user.saved["train"], "--context-length", 48,
                 "--max-tokens", 2048, "--hooks", HOOK, "--out", work / "c4", "--no-progress").no_traceback()
    assert r.rc != 0 and f"contexts of {L} tokens" in r.err and f"--context-length {L}" in r.err, r.text
    saesteer("cache", "--model", user.model, "--dataset", user.saved["train"], "--context-length", 16,
             "--max-tokens", 512, "--hooks", HOOK, "--out", work / "c5", "--no-progress").ok()
    assert np.array_equal(cached_tokens(work / "c5"), rows_of(user.saved["train"])[:512 // 16, :16])


def test_a_small_cache_of_a_big_dataset_reads_only_its_start(user, real_corpus):
    """Book-length documents (50 KB each, as pg19 or a folder of code files), a few contexts asked
    for: the cache reads the start of the file, not hundreds of documents (the estimate sampled 512
    documents and the build tokenized 256 at a time: here it parsed the whole file, and a line it did
    not need, malformed, failed the command)."""
    work = user.work / "big"
    work.mkdir()
    text = "\n\n".join(real_corpus.train_docs)
    books = [text[i * 50_000:(i + 1) * 50_000] for i in range(len(text) // 50_000)]
    assert len(books) >= 8
    with open(work / "books.jsonl", "w", encoding="utf-8") as f:
        for i in range(64):
            f.write(json.dumps({"text": books[i % len(books)]}) + "\n")
        f.write('{"text": "a line no parser reads\n')
        for i in range(8):
            f.write(json.dumps({"text": books[i]}) + "\n")
    r = cache(user.model, work / "books.jsonl", work / "cache").ok()
    manifest = json.loads((work / "cache/manifest.json").read_text())
    assert manifest["shards"][-1]["text_end"][0] < 16, r.text
    assert len(cached_tokens(work / "cache")) == 2048 // L


def test_a_hub_dataset_configuration_is_read_again_once_the_cache_is_gone(user, real_corpus, tmp_path, monkeypatch):
    """A hub dataset of several configurations, as `datasets` leaves it in its cache (read offline):
    `cache --dataset wikitext --dataset-config wikitext-2-raw-v1` records the configuration and split
    it read; `eval` given only the SAE reads that configuration's validation split, also after the
    cache (often deleted once trained: it is large) is gone. (The SAE recorded the dataset and split
    but not the configuration, so eval failed: "multiple 'wikitext' configurations in the cache", and
    a dataset with a default configuration would have been read in that one.)"""
    import datasets.config

    from helpers.tiny_hf import cached_hub_dataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    docs = list(real_corpus.train_docs) + list(real_corpus.validation_docs)
    half = len(docs) // 2
    cached_hub_dataset(tmp_path / "datasets", "wikitext", {
        "wikitext-2-raw-v1": {"train": docs[:half], "validation": docs[half:half + 20]},
        "wikitext-103-raw-v1": {"train": docs[half:], "validation": docs[:20]}}, column="text")
    cache(user.model, "wikitext", tmp_path / "cache", "--dataset-config", "wikitext-2-raw-v1").ok()
    ds = json.loads((tmp_path / "cache/manifest.json").read_text())["dataset"]
    assert (ds["name"], ds["config"], ds["split"]) == ("wikitext", "wikitext-2-raw-v1", "train")
    saesteer("train", "--cache", tmp_path / "cache", "--out", tmp_path / "run", "--architecture", "topk", "--d-sae", 64,
             "--k", 4, "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4,
             "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae").ok()
    trained = json.loads((tmp_path / "run/metrics.json").read_text())["saes"]["sae"]
    shutil.rmtree(tmp_path / "cache")
    saesteer("eval", "--sae", tmp_path / "run/saes/sae", "--contexts", 4, "--ce-contexts", 4, "--absorption", "false",
             "--probing", "false", "--quiet", "--out", tmp_path / "eval").ok()
    doc = json.loads((tmp_path / "eval/eval.json").read_text())
    assert (doc["data"]["dataset"], doc["data"]["dataset_config"], doc["data"]["split"]) == \
           ("wikitext", "wikitext-2-raw-v1", "validation")
    assert doc["saes"]["sae"]["metrics"]["ce_loss_clean"] == pytest.approx(trained["ce_loss_clean"], rel=1e-6)


def test_a_sentencepiece_models_own_rows_without_metadata_are_read(user, real_models):
    """Rows SAELens made with a Mistral / Llama-2 style tokenizer (SentencePiece, "▁" for spaces, <0xNN>
    byte fallback for CJK) and no sae_lens.json, as a hub dataset publishes them: the rows are cut
    mid-word and mid-character, so decoded and encoded again their edges differ ("▁" gained, a whole
    run of byte tokens read as U+FFFD when one is cut). They were refused as another tokenizer's
    (87% of the ids came back); the text between special tokens is now compared, less its cut edges."""
    from transformers import AutoTokenizer

    from training.pretokenized import ROUND_TRIP_MIN, ROUND_TRIP_ROWS as N, round_trip_share

    work = user.work / "sentencepiece"
    model = real_models.path("mistral")
    rows = pretokenize(model, user.train, work / "pretok")
    (rows / "sae_lens.json").unlink()
    cache(model, rows, work / "cache").ok()
    assert np.array_equal(cached_tokens(work / "cache"), rows_of(rows)[:2048 // L])
    # any N of its rows (as many as the check reads) pass (SAELens shuffles them by default: the first rows
    # may be any), rows that start mid-word included; another tokenizer's rows (GPT-2's, ids inside the vocabulary) do not
    tok, own = AutoTokenizer.from_pretrained(model), list(rows_of(rows)[:320])
    assert min(round_trip_share(own[i:i + N], tok) for i in range(0, len(own), N)) >= ROUND_TRIP_MIN
    gpt2_rows = list(rows_of(pretokenize(user.model, user.train, work / "gpt2-pretok"))[:N])  # ids < 1024 both
    assert round_trip_share(gpt2_rows, tok) < ROUND_TRIP_MIN


def eval_text(work: Path, docs: list[str]) -> Path:
    """Held-out text as a user keeps it: a jsonl file of documents."""
    path = work / "held-out.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def train_small(cache_dir: Path, out: Path, *flags):
    return saesteer("train", "--cache", cache_dir, "--out", out, "--architecture", "topk", "--d-sae", 64, "--k", 4,
                    "--total-tokens", 1024, "--batch-size", 256, "--holdout-tokens", 256, "--eval-ce-contexts", 4,
                    "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress", "--sae-name", "sae",
                    *flags)


def test_llama_style_rows_record_the_bos_between_their_documents(user, real_models):
    """SAELens's defaults with a tokenizer whose BOS is not its EOS and starts every document (Mistral,
    Llama): the rows hold BOS between documents, no EOS. The manifest recorded the --separator flag's
    default (eos), a --separator given was ignored and recorded, and `eval` on text then packed with
    EOS between documents. Now the separator is read from sae_lens.json (bos), one that contradicts the
    rows is refused naming both, and eval packs text with BOS between documents, as SAELens's own
    `concat_and_batch_sequences` does."""
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences
    from transformers import AutoTokenizer

    from training.packing import open_packer
    from training.text import TextConfig

    work, model = user.work / "llama-style", real_models.path("mistral")
    tok = AutoTokenizer.from_pretrained(model)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    rows = pretokenize(model, user.train, work / "pretok")
    held = rows_of(rows)
    assert bos != eos and (held[:, 1:] == bos).sum() > 10 and not (held == eos).any()  # BOS between, no EOS

    r = cache(model, rows, work / "eos", "--separator", "eos").no_traceback()
    assert r.rc != 0 and "its rows hold '<s>' between documents" in r.err and "puts '</s>' there" in r.err, r.text
    assert "--separator bos" in r.err and "sae_lens.json" in r.err and "adds '<s>' before" in r.err, r.err
    assert not (work / "eos/manifest.json").exists()
    r = saesteer("cache", "--model", model, "--dataset", rows, "--bos-policy", "doc", "--separator", "bos",
                 "--out", work / "doc").no_traceback()
    assert r.rc == 2 and "--separator bos" in r.err and "second BOS" in r.err, r.text

    cache(model, rows, work / "cache").ok()
    assert json.loads((work / "cache/manifest.json").read_text())["separator"] == "bos"
    train_small(work / "cache", work / "run").ok()
    held_out = eval_text(work, user.validation)
    saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", held_out, "--contexts", 4, "--ce-contexts", 4,
             "--absorption", "false", "--probing", "false", "--quiet", "--out", work / "eval").ok()
    data = json.loads((work / "eval/eval.json").read_text())["data"]
    assert (data["dataset"], data["bos_policy"], data["separator"]) == (str(held_out), "prepend", "bos"), data

    # text packed so is what SAELens makes of it with the same settings: [BOS] + the stream per row, BOS
    # between documents (where a document starts a row, SAELens writes its BOS once, we twice)
    ours, _ = open_packer(TextConfig(dataset=str(held_out), context_length=L, separator="bos"), tok).take(10_000)
    theirs = np.stack([t.numpy() for t in concat_and_batch_sequences(
        (tok.encode(d, return_tensors="pt")[0] for d in user.validation), context_size=L,
        begin_batch_token_id=bos, sequence_separator_token_id=bos)])
    assert (ours[:, 1:] == bos).sum() == len(user.validation) - 1 and not (ours == eos).any()
    assert np.array_equal(ours, theirs)  # here no document starts a row

    # training without a cache records it too (data.text), and refuses a contradicting --separator alike
    live = ("train", "--model", model, "--dataset", rows, "--context-length", L, "--hook", HOOK, "--architecture",
            "topk", "--d-sae", 64, "--k", 4, "--total-tokens", 512, "--batch-size", 128, "--holdout-tokens", 128,
            "--eval-ce-contexts", 0, "--eval-every-tokens", 0, "--checkpoint-every-tokens", 0, "--no-progress",
            "--sae-name", "sae")
    r = saesteer(*live, "--out", work / "live-eos", "--separator", "eos").no_traceback()
    assert r.rc != 0 and "its rows hold '<s>' between documents" in r.err, r.text
    saesteer(*live, "--out", work / "live").ok()
    assert json.loads((work / "live/saes/sae/saesteer.json").read_text())["data"]["text"]["separator"] == "bos"


def test_rows_without_metadata_record_an_unknown_separator(user, real_models):
    """Rows without sae_lens.json (as many hub datasets publish them): what they hold between documents
    is not known, so the manifest records "rows" (not the flag's default), and text is packed for an SAE
    trained on them only with a --separator given: eval on text refuses, naming the flag."""
    work, model = user.work / "no-metadata", real_models.path("mistral")
    rows = pretokenize(model, user.train, work / "pretok")
    (rows / "sae_lens.json").unlink()
    cache(model, rows, work / "cache").ok()
    assert json.loads((work / "cache/manifest.json").read_text())["separator"] == "rows"
    train_small(work / "cache", work / "run").ok()
    held_out = eval_text(work, user.validation)
    flags = ("--contexts", 4, "--ce-contexts", 4, "--absorption", "false", "--probing", "false", "--quiet")
    r = saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", held_out, *flags).no_traceback()
    assert r.rc != 0 and "separator 'rows'" in r.err and "pass --separator eos, bos or none" in r.err, r.text
    assert "--separator rows" not in r.err  # none was given: it is the one recorded
    saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", held_out, "--separator", "bos", *flags,
             "--out", work / "eval").ok()
    assert json.loads((work / "eval/eval.json").read_text())["data"]["separator"] == "bos"


def test_a_pretokenized_cache_trains_with_held_out_text(user, real_models):
    """`train --cache <a pretokenized cache> --eval-dataset held-out.jsonl` (the CE example of `train
    --help`): the eval text was read from the cache's token column ("no column 'input_ids' ... pass
    --text-column", a flag that does nothing with --cache); it is text, read from its own column and
    packed with the separator the rows hold, and eval given only the SAE reads it again. Rows of an
    unknown separator cannot pack text: the refusal names what to give instead (not --separator)."""
    work = user.work / "cache-eval-text"
    work.mkdir()
    held_out = eval_text(work, user.validation)
    cache(user.model, user.saved["train"], work / "cache").ok()
    train_small(work / "cache", work / "run", "--eval-dataset", held_out).ok()
    ce = json.loads((work / "run/saes/sae/saesteer.json").read_text())["data"]["ce_eval_data"]
    assert (ce["dataset"], ce["contexts"]) == (str(held_out), 4), ce
    flags = ("--contexts", 4, "--ce-contexts", 4, "--absorption", "false", "--probing", "false", "--quiet")
    saesteer("eval", "--sae", work / "run/saes/sae", *flags, "--out", work / "eval").ok()
    data = json.loads((work / "eval/eval.json").read_text())["data"]
    assert (data["dataset"], data["text_column"], data["separator"]) == (str(held_out), "text", "eos"), data
    # held-out text in another column: refused naming the column read (the cache's is its token column)
    body = work / "body.jsonl"
    body.write_text("".join(json.dumps({"body": d}) + "\n" for d in user.validation), encoding="utf-8")
    r = train_small(work / "cache", work / "body-run", "--eval-dataset", body).no_traceback()
    assert r.rc == 2 and "has no column 'text'" in r.err and "Held-out text is read from column 'text'" in r.err, r.err
    assert "read its text from" not in r.err and "--text-column" not in r.err, r.err
    # rows holding nothing between documents (SAELens's sequence_separator_token=None): recorded as such,
    # as AutoTokenizer's GPT-2 (what SAELens tokenized with) adds nothing to a document; TransformerLens's adds BOS
    plain = pretokenize(user.model, user.validation, work / "plain", sequence_separator_token=None)
    assert not (rows_of(plain)[:, 1:] == rows_of(plain)[0, 0]).any()  # BOS first in a row, nothing between
    cache(user.model, plain, work / "plain-cache").ok()
    assert json.loads((work / "plain-cache/manifest.json").read_text())["separator"] == "none"
    # eval of the SAE (trained with EOS between documents) on those rows: refused naming the separator its training
    # recorded (none was given: it named "--separator eos" and said to leave it out), and the flag that reads them
    r = saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", plain, *flags).no_traceback()
    assert r.rc == 2 and "hold nothing between documents" in r.err and "trained with separator eos" in r.err, r.text
    assert "pass --separator none" in r.err and "--separator eos" not in r.err and "leave it out" not in r.err, r.err
    saesteer("eval", "--sae", work / "run/saes/sae", "--dataset", plain, "--separator", "none", *flags).ok()

    model = real_models.path("mistral")
    rows = pretokenize(model, user.train, work / "pretok")
    (rows / "sae_lens.json").unlink()
    cache(model, rows, work / "rows-cache").ok()
    r = train_small(work / "rows-cache", work / "rows-run", "--eval-dataset", held_out).no_traceback()
    assert r.rc == 2 and "separator is not known" in r.err and "--separator does nothing with --cache" in r.err, r.text
    assert "--eval-split NAME" in r.err and "pass --separator" not in r.err, r.err


def test_text_settings_that_read_the_rows_as_cached_are_not_refused(user, real_models):
    """`train --cache <pretokenized cache>` with the text settings `cache` read the rows with: the
    column 'text' (the default, which reads SAELens's token column where there is no text) and
    separator 'rows' (as the rows hold) were refused as other than the cache's ('input_ids', 'eos'),
    and SAELens's 'bos' too, which for GPT-2 (BOS = EOS) puts the same token there; another context
    length still is, and 'eos' for rows of a tokenizer whose BOS is not its EOS (Mistral's)."""
    work = user.work / "as-cached"
    cache(user.model, user.saved["train"], work / "cache", "--text-column", "text", "--separator", "rows").ok()
    manifest = json.loads((work / "cache/manifest.json").read_text())
    assert (manifest["dataset"]["text_column"], manifest["separator"]) == ("input_ids", "eos"), manifest
    same = ("--text-column", "text", "--separator", "rows", "--context-length", L, "--bos-policy", "prepend")
    train_small(work / "cache", work / "run", *same).ok()
    train_small(work / "cache", work / "run-bos", "--separator", "bos").ok()
    mistral = real_models.path("mistral")
    cache(mistral, pretokenize(mistral, user.train, work / "mistral-rows"), work / "mistral-cache").ok()
    assert json.loads((work / "mistral-cache/manifest.json").read_text())["separator"] == "bos"
    r = train_small(work / "mistral-cache", work / "mistral-eos", "--separator", "eos").no_traceback()
    assert r.rc == 2 and "--separator eos (the cache's: bos)" in r.err, r.err
    r = train_small(work / "cache", work / "short", *same[:4], "--context-length", L // 2).no_traceback()
    assert r.rc == 2 and f"--context-length {L // 2} (the cache's: {L})" in r.err and "--text-column" not in r.err, r.err


@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_what_saelens_puts_between_documents_is_read_as_its_code_does(user, real_models, family):
    """`saelens_between` (what a sae_lens.json's settings leave between two documents of a row) against
    SAELens's own `concat_and_batch_sequences` on documents tokenized as its PretokenizeRunner does,
    for each separator and begin-sequence setting; and the separator recorded for them packs the same."""
    import dataclasses

    from sae_lens.tokenization_and_batching import concat_and_batch_sequences
    from transformers import AutoTokenizer

    from training.packing import between_documents, special_tokens
    from training.pretokenized import rows_separator, saelens_between
    from training.text import TextConfig

    tok = AutoTokenizer.from_pretrained(real_models.path(family))
    first, second = "Le caf\u00e9 ouvre t\u00f4t.", "def f(x):\n    return x"
    plain = [tok(d, add_special_tokens=False)["input_ids"] for d in (first, second)]
    recorded = {}
    for sep in ("bos", "eos", None):
        for begin in (None, "bos"):
            meta = {"sequence_separator_token": sep, "begin_sequence_token": begin, "path": "sae_lens.json"}
            ids = {None: None, "bos": tok.bos_token_id, "eos": tok.eos_token_id}
            row = next(concat_and_batch_sequences(
                (tok.encode(d, return_tensors="pt")[0] for d in (first, second, first)),
                context_size=sum(map(len, plain)) + 8, sequence_separator_token_id=ids[sep],
                begin_sequence_token_id=ids[begin])).tolist()
            end = row.index(plain[0][0]) + len(plain[0])
            held = row[end:end + next(i for i in range(len(row)) if row[end + i:end + i + len(plain[1])] == plain[1])]
            assert saelens_between(meta, tok) == held, (family, sep, begin)
            for policy in ("prepend", "none"):
                cfg = TextConfig(dataset="x", bos_policy=policy, separator="rows")
                found = recorded[sep, begin, policy] = rows_separator(cfg, meta, tok)
                if found != "rows":
                    assert between_documents(dataclasses.replace(cfg, separator=found), special_tokens(tok)) == held
    if family == "gpt2":  # <|endoftext|> is BOS and EOS; the tokenizer adds nothing to a document
        assert recorded["bos", None, "prepend"] == recorded["eos", None, "prepend"] == "eos"
        assert recorded[None, None, "prepend"] == "none"
    else:  # each document starts with its own <s>: no separator is added, and one that is is another token
        assert recorded["bos", None, "prepend"] == recorded[None, None, "prepend"] == "bos"
        assert recorded["eos", None, "prepend"] == "rows"  # '</s>' '<s>': no separator of ours puts that
