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


def test_no_text_file_is_opened_in_the_locales_encoding() -> None:
    """Every text-mode open / read_text / write_text in the package names its encoding (on Windows
    the default is the code page, not UTF-8): a scan of the source, so a new one is caught here."""
    import ast

    root = Path(__file__).resolve().parents[1]
    calls = ("open", "read_text", "write_text", "fdopen")
    found = []
    for package in ("saesteer", "training", "features", "autointerp", "steering", "saes", "toyworld", "evals"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id
                if name not in calls or any(k.arg == "encoding" for k in node.keywords):
                    continue
                at = node.args[1:2] if name in ("open", "fdopen") and isinstance(func, ast.Name) else node.args[:1]
                modes = [a.value for a in at if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
                if name in ("open", "fdopen"):
                    text_mode = [m for m in modes if isinstance(m, str) and set(m) <= set("rwax+t") and m]
                    # open(path) reads text; x.open("w") is Path.open; x.open(path, ...) is a store or a dataset
                    if not (text_mode or (isinstance(func, ast.Name) and len(node.args) == 1 and not modes)):
                        continue
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

    assert _slug("EleutherAI/pythia-70m") == "EleutherAI-pythia-70m"
    assert _slug("..") == "model" and _slug("../ckpt.") == "ckpt"  # was '..': the cache left caches/
    assert _slug(r"C:\Users\José\gpt2") == "C-Users-Jos-gpt2"
    assert _slug("con") == "con_" and _slug("blocks.2.hook_resid_post") == "blocks.2.hook_resid_post"
    for text in ["aux", "a<b>", "x. ", "lpt3.txt", "日本", "COM1"]:
        assert unportable_name(portable_name(text, "x")) is None


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
