"""File plumbing every package shares: atomic writes, durable appends, exclusive locks (naming
their holder), listing, names every OS takes, and users' text and JSON files read as UTF-8.

Atomic writes: the bytes go to a temporary name in the same directory (`.<name>.XXXX.tmp`), are
flushed and fsynced, then renamed over the target, then the directory is fsynced. A crash leaves
either the old file or the new one, never half of one; an error removes the temporary file.

    atomic_write_bytes(path, data)          atomic_write_json(path, obj)
    with atomic_open(path) as f: f.write(...)            # streamed (e.g. a large shard)
    with atomic_path(path) as tmp: save_file(t, tmp)     # another library writes the file by name
    with building_folder(folder, ".tmp-") as tmp: ...   # a new folder of several files, whole or not at all
    put_folder_in_place(built, folder, aside)           # a built folder replacing an earlier one
    atomic_save_safetensors(path, tensors)  # the same for safetensors' save_file: a full disk an OSError

Modes: `tempfile` makes private files (0600) and folders (0700); what we write is for the user to
share (caches, SAE folders, stores), so a new file gets the mode an ordinary `open` would give it
(0666 minus the umask; a file it replaces keeps its mode) and `make_temp_dir` folders 0777 minus
the umask.

This module imports only the standard library (the floor: `saes` imports no other package of
ours, and every package above it imports this); `atomic_save_safetensors` imports safetensors when called.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

TMP_SUFFIX = ".tmp"  # every temporary file of an atomic write ends so (leftovers are found by it)
_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)  # a file system that cannot fsync a directory


def files_in(folder: str | os.PathLike) -> list[Path]:
    """The plain files of a folder another tool wrote (a delphi run, a Neuronpedia export), hidden
    ones left out: a copy's .DS_Store or AppleDouble twin (`._batch-0.jsonl.gz`) and a sync tool's
    files are no tool's output, and no output name starts with a dot."""
    return [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]


# Names Windows keeps for devices, with or without an extension ("nul.txt" is the device too).
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                    *(f"{p}{i}" for p in ("COM", "LPT") for i in "123456789\u00b9\u00b2\u00b3")}


def unportable_name(name: str) -> str | None:
    """Why `name` cannot be a file or folder name on every OS (a character Windows forbids, a
    trailing dot or space, which Windows drops, a Windows device name), or None when it can."""
    bad = sorted({c for c in name if c in '<>:"/\\|?*' or ord(c) < 32})
    if bad:
        return f"it holds {' '.join(map(repr, bad))}, which Windows forbids in file names"
    if name.endswith((".", " ")):
        return "it ends with a dot or a space, which Windows drops (another name's file would be overwritten)"
    if name.split(".")[0].upper().rstrip(" ") in _WINDOWS_DEVICES:
        return f"{name.split('.')[0]!r} is a Windows device name, not a file"
    return None


def portable_name(text: str, fallback: str) -> str:
    """`text` made a name every OS takes: runs of characters other than letters, digits, '.', '_'
    and '-' become '-', leading and trailing '-' go, trailing '.' too (Windows drops them; '.' and
    '..' are no new folder), a Windows device name's stem gets a '_'. A leading '.' stays: names
    made before ('./my-gpt2' -> '.-my-gpt2') name the folders users already have."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").rstrip(".-") or fallback
    if unportable_name(name):  # a device name: 'con' -> 'con_', 'nul.txt' -> 'nul_.txt'
        stem, dot, rest = name.partition(".")
        name = stem + "_" + dot + rest
    return name


def case_collisions(names: list[str]) -> list[list[str]]:
    """Groups of distinct names that differ only in case: one file on macOS's and Windows's
    default (case-insensitive) file systems."""
    groups: dict[str, set[str]] = {}
    for n in names:
        groups.setdefault(n.casefold(), set()).add(n)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a crash (nothing where directories cannot
    be opened or fsynced: some platforms and file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask (from /proc where there is one: reading it there changes nothing)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike) -> int:
    """The mode `open(path, "w")` would leave: the existing file's, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def make_temp_dir(prefix: str, dir: str | os.PathLike) -> Path:
    """`tempfile.mkdtemp` with the mode `os.mkdir` would give (0777 minus the umask), for folders
    that are renamed into place and then shared."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    except OSError as e:  # a read-only folder: name it, not the random name that was never made
        if e.filename is not None:
            e.filename = str(dir)
        raise
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def temp_target(path: str | os.PathLike) -> Path:
    """The file an atomic write's temporary file `path` stands for (`.<name>.XXXX.tmp` -> `<name>`),
    for messages; `path` itself when it is not one."""
    path = Path(path)
    m = re.match(r"^\.(.+)\.\w{8}" + re.escape(TMP_SUFFIX) + "$", path.name)
    return path.with_name(m.group(1)) if m else path


def name_the_final_file(e: BaseException, tmp_dir: Path, final_dir: Path) -> None:
    """Make an OSError about a file in `tmp_dir` (a folder written, then renamed to `final_dir`)
    name that file in `final_dir`: the path a user can look for, not a temporary one that is gone."""
    if isinstance(e, OSError) and e.filename is not None and Path(e.filename).parent == Path(tmp_dir):
        e.filename = str(Path(final_dir) / Path(e.filename).name)


@contextlib.contextmanager
def building_folder(final: str | os.PathLike, mark: str) -> Iterator[Path]:
    """A new folder beside `final` (`.<name><mark>XXXX`) to write a new folder `final` in; renamed to
    `final` when the block ends (parent fsynced), removed when it raises (an OSError about one of its
    files then names that file in `final`). A crash leaves no half of `final`, only the hidden folder
    (the `mark` its writer looks for to remove it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{final.name}{mark}", final.parent)
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        name_the_final_file(e, tmp, final)
        raise
    fsync_dir(final.parent)


def put_folder_in_place(built: str | os.PathLike, final: str | os.PathLike, aside: str | os.PathLike) -> None:
    """Rename the finished folder `built` to `final`, replacing an earlier `final`: that one is first
    renamed to `aside` (a free name on the same file system), then removed once the new one is in
    place, or renamed back if the rename fails. A crash between leaves it whole at `aside`."""
    built, final, aside = Path(built), Path(final), Path(aside)
    replacing = os.path.lexists(final)
    if replacing:
        os.rename(final, aside)
    try:
        os.rename(built, final)
    except BaseException:
        if replacing:
            os.rename(aside, final)
        raise
    fsync_dir(final.parent)
    if replacing:
        shutil.rmtree(aside, ignore_errors=True)


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """The name of a new, closed temporary file beside `path` with the target's mode; renamed over
    `path` (directory fsynced) when the block ends without error, removed when it raises. The block
    writes it by name, fsyncs it and closes every file of it it opened: Windows renames or deletes
    no file that is still open, not even in the process that holds it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode(path))  # by name: os.fchmod is POSIX-only before Python 3.13 (Windows)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            e.filename = str(path)  # a write or fsync that failed (a full disk) names no file: the one written
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write the new content of `path` into; it replaces `path` atomically when
    the block ends without error (see the module docstring)."""
    with _replacing(Path(path)) as tmp:
        with open(tmp, "wb") as f:  # by name: `f.name` says which file it is
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that opens files by name (e.g. safetensors'
    `save_file`); the file written there replaces `path` atomically when the block ends without
    error."""
    with _replacing(Path(path)) as tmp:
        yield Path(tmp)
        with open(tmp, "rb") as f:  # the writer's own file object is closed: fsync what it wrote
            os.fsync(f.fileno())


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict[str, Any],
                            metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` to `path` with safetensors' `save_file` (the file written by name, no copy of the
    bytes in memory), atomically. Every safetensors file we write goes through here: safetensors' Rust
    writer reports a failed write (a full disk, a file size limit) as a `SafetensorError`, which is
    turned into the OSError naming `path` that every other failed write gives."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except SafetensorError as e:
        error = safetensors_os_error(e, path)
        if error is None:
            raise
        raise error from e


def safetensors_os_error(e: Exception, path: str | os.PathLike) -> OSError | None:
    """The OSError of a failed safetensors write to `path`: its errno from the message ("... (os error
    28)" as safetensors 0.8 words it, "IoError(Os { code: 28, ...})" as older ones did), else the
    message itself; None when it is no I/O error (a bug)."""
    text = str(e)
    code = re.search(r"\(os error (\d+)\)|\bOs \{ code: (\d+)", text)
    if code is not None:
        errno_ = int(code.group(1) or code.group(2))
        return OSError(errno_, os.strerror(errno_), str(path))
    if "I/O error" in text or "IoError" in text:
        return OSError(None, f"could not write it ({text})", str(path))
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, default: Callable | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=default) + "\n").encode())


def append_durably(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to `path` (created if absent) and fsync it before returning (a log line a
    crash must not lose)."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())



def sha256_file(path: str | os.PathLike, chunk_bytes: int = 8 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks into one reused buffer."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk_bytes)
        mv = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return h.hexdigest()


class FileLock:
    """An exclusive, non-blocking lock (flock; msvcrt's byte lock on Windows) on the file `path`,
    held inside `with` and released by the OS if the process dies (kill -9 included: a later run is
    never blocked by a dead one). While held, the file says who holds it (pid, host, command, start
    time); when another process holds it, `busy(holder)` is raised with that said in words, so each
    user can name the other process in its own message (and exception type):

        with FileLock(out / ".lock", busy=lambda holder: RuntimeError(f"{holder} is writing {out}")):
            ...

    On a filesystem without flock (some NFS setups: ENOLCK), the file's record alone decides: a
    record of a live process, or of another host, is refused (naming the file to delete if that
    process is gone); one of a process gone from this host is stale and taken over (never on
    Windows, where no process can be probed harmlessly: `_gone`). Reading the record and writing
    one's own is done holding `<path>.claim` (created with O_EXCL, atomic on NFS too), so two
    processes starting together cannot both find it empty and both take it.
    """

    def __init__(self, path: str | os.PathLike, busy: Callable[[str], BaseException]) -> None:
        self.path = Path(path)
        self.busy = busy
        self._fd: int | None = None
        self._written: dict | None = None  # the record this process wrote
        self._os_locked = False

    def __enter__(self) -> "FileLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if self._locked_by_os():
                self._write_record()
            else:  # no file locks here: the record is the lock
                with self._claim():
                    self._refuse_if_recorded()
                    self._write_record()
        except BaseException:
            self.release(clear=False)
            raise
        return self

    def refuse_if_held(self) -> None:
        """Raise `busy(holder)` now if another process holds the lock: a command's early check, so that
        a second run is refused before it loads a model (it takes the lock for good later). The check
        creates nothing and writes nothing: it is no holder, and it must never empty a holder's record."""
        try:
            self._fd = os.open(self.path, os.O_RDWR)  # read-write: NFS's flock (a POSIX lock) needs it
        except FileNotFoundError:  # never locked
            return
        try:
            if not self._locked_by_os():
                self._refuse_if_recorded()
        finally:
            self.release(clear=False)

    def _locked_by_os(self) -> bool:
        """Take the OS's lock on the open file: True when taken, False where the filesystem has no
        locks; `busy` is raised when another process holds it."""
        try:
            _os_lock(self._fd, take=True)
            self._os_locked = True
        except OSError as e:
            # held by another process: flock says EWOULDBLOCK; msvcrt's LK_NBLCK says EACCES (EDEADLK: LK_LOCK's)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                self._refuse(lock_holder(self._record()))
            return False
        return True

    def _refuse_if_recorded(self) -> None:
        """Where the record is the lock: refuse a record of a process not known to be gone."""
        record = self._record()
        if record and not _gone(record):
            self._refuse(f"{lock_holder(record)}; if it is no longer running, delete {self.path}")

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        claim = self.path.with_name(self.path.name + ".claim")
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            self._refuse(f"another process, which is taking {self.path} at this moment; if none is, delete {claim}")
        try:
            yield
        finally:
            os.close(fd)
            _unlink_quietly(claim)

    def _write_record(self) -> None:
        self._written = _this_process()
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)  # not os.pwrite: Windows has none
        os.write(self._fd, json.dumps(self._written).encode())

    def _record(self) -> dict:
        try:
            os.lseek(self._fd, 0, os.SEEK_SET)
            record = json.loads(os.read(self._fd, 4096) or b"{}")
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _refuse(self, holder: str) -> None:
        self.release(clear=False)  # never emptied: the record is the holder's
        raise self.busy(holder) from None

    def release(self, clear: bool = True) -> None:
        """Release the lock, its record emptied (`clear`) while it is still this process's: where the
        record is the lock, another process may have taken it over (it judged this one gone)."""
        if self._fd is not None:
            # emptied, not deleted: deleting a lock file lets two processes lock two files
            with contextlib.suppress(OSError):
                if clear and self._record() == self._written:
                    os.ftruncate(self._fd, 0)
            if self._os_locked:
                with contextlib.suppress(OSError):
                    _os_lock(self._fd, take=False)
            os.close(self._fd)
            self._fd = self._written = None
            self._os_locked = False

    def __exit__(self, *exc: Any) -> None:
        self.release()


# Byte-order marks of the UTF-16 and UTF-32 files Windows tools write ("Unicode" in Notepad,
# PowerShell 5's `>`); UTF-32's little-endian mark starts with UTF-16's, so it is tested first.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


def wide_encoding(head: bytes) -> str | None:
    """"UTF-16" / "UTF-32" when a file starting with `head` (its first 4 bytes) is in one (by its
    byte-order mark, or a NUL among its first two bytes: UTF-16 text without a mark), else None."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name
    return "UTF-16" if b"\x00" in head[:2] else None


def refuse_wide_text(path: str | os.PathLike, what: str = "file", head: bytes | None = None) -> None:
    """Refuse (ValueError) a text file saved as UTF-16 or UTF-32, saying how to convert it: read as
    UTF-8 it is garbage (NULs between the letters) or an unreadable-JSON error that hides why."""
    if head is None:
        with open(path, "rb") as f:
            head = f.read(4)
    found = wide_encoding(head)
    if found:
        raise ValueError(f"{what} {path} is {found} text; saesteer reads UTF-8: save it as UTF-8 (Notepad: Save as, "
                         f"Encoding UTF-8) or convert it, e.g. iconv -f {found} -t UTF-8 IN > OUT")


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """A user's text file as UTF-8 text, a leading byte-order mark dropped (Windows tools write
    one); UTF-16 / UTF-32 and other non-UTF-8 files raise ValueError naming the file and the fix.
    A missing file raises FileNotFoundError."""
    raw = Path(path).read_bytes()
    refuse_wide_text(path, what, raw[:4])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); convert it "
                         f"to UTF-8, e.g. iconv -f latin1 -t utf-8 (Notepad: Save as, Encoding UTF-8)") from None


# Windows's byte locks are mandatory (they block reads of the locked bytes by other processes), so the
# lock sits on a byte far past the record, which then stays readable to the process that is refused.
_WINDOWS_LOCK_OFFSET = 1 << 30


def _os_lock(fd: int, take: bool) -> None:
    """Take (non-blocking, exclusive) or give back the OS's lock on the open file `fd`; it is also
    released by the OS when the process dies. OSError when another process holds it (or the
    filesystem has no locks). Given back before the file is closed: Windows frees a closed file's
    byte locks only when "resources allow", so a run started right after could find it still held."""
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt's byte lock
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK if take else msvcrt.LK_UNLCK, 1)
    else:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB if take else fcntl.LOCK_UN)


def _this_process() -> dict:
    import shlex
    import socket
    import sys
    import time

    argv = list(sys.argv) or ["python"]
    argv[0] = "saesteer" if argv[0].endswith("__main__.py") else os.path.basename(argv[0])
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(argv)[:300],
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _gone(record: dict) -> bool:
    """Whether the process of a lock record is known to be gone: same host, and no such pid. Never
    on Windows, where os.kill(pid, 0) would end that process (TerminateProcess), not probe it."""
    import socket
    import sys

    if sys.platform == "win32":
        return False
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def lock_holder(record: dict) -> str:
    """A lock record in words: "process 1234 on host-a (`saesteer label --store x.db`, since ...)"."""
    if not record.get("pid"):
        return "another process (it has not said who it is yet)"
    return (f"process {record['pid']} on {record.get('host', '?')} (`{record.get('command', '?')}`, "
            f"since {record.get('since', '?')})")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file (UTF-8, a byte-order mark allowed); a missing file raises FileNotFoundError,
    a malformed or non-UTF-8 one ValueError, each naming it."""
    path = Path(path)
    try:
        text = read_text_file(path, what)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); it may be truncated or corrupt") from None
