"""Crash-safe file writes: a file is either absent, the old version, or the complete new version; and one
writer at a time for a directory that several commands may write (`writer_lock`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from imprag.errors import ImpragError

__all__ = [
    "LOCK",
    "LockedError",
    "OutputExistsError",
    "atomic_directory",
    "atomic_write_text",
    "cache_dir",
    "check_output",
    "writer_lock",
]

LOCK = ".imprag.lock"
"""The lock file `writer_lock` keeps inside the directory it guards (never part of the output itself)."""


def cache_dir() -> Path:
    """Where imprag keeps what it derives once per machine (converted models, the dtype measurement):
    $IMPRAG_CACHE, else $XDG_CACHE_HOME/imprag, else ~/.cache/imprag."""
    if os.environ.get("IMPRAG_CACHE"):
        return Path(os.environ["IMPRAG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imprag"


class OutputExistsError(ImpragError, FileExistsError):
    """An output directory holds something that is not ours to replace."""


class LockedError(ImpragError, RuntimeError):
    """Another process is writing the directory."""


@contextmanager
def writer_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Hold the exclusive write lock of `directory` (created if missing) for the block, or fail at once.

    Two writers of one index each load its vectors, add their own and write the file back: the second
    write loses the first one's vectors while both report success. So every writer takes this lock first
    (an OS file lock through `filelock`: released when the process dies, even by kill -9) and a second one
    stops with LockedError before any work. Readers never take it.

    A folder the lock created and the writer left empty (it failed before its first output) is removed
    again: the lock file is unlinked while still held, so a writer that comes meanwhile either fails on the
    held file or makes a new one in a folder that then is not empty and stays.
    """
    from filelock import FileLock, Timeout

    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise LockedError(
            f"{directory} is being written by another imprag process; {what} waits for no one, so nothing "
            "was done: run it again when that process has finished"
        ) from None
    try:
        yield
    finally:
        try:
            if created and directory.is_dir() and not _holds_files(directory):
                (directory / LOCK).unlink(missing_ok=True)
                directory.rmdir()  # fails (and stays) if anything, even an empty folder, appeared in it
        except OSError:
            pass
        finally:
            lock.release()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the file ordinary permissions
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(
    path: str | Path, replaces: str | Sequence[str] | None = None, kind: str | None = None
) -> None:
    """Refuse (OutputExistsError) an output folder that is not ours to write into: a file, or a folder with
    contents but none of the `replaces` marks (file names or glob patterns such as "*/run.json": what an
    earlier output of this kind holds). `atomic_directory` calls it before replacing; commands call it
    before their work too. `kind` ("run", "evaluation") names the output in the message."""
    path = Path(path)
    marks = [replaces] if isinstance(replaces, str) else list(replaces or ())
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} is a file, not an output folder: choose another output directory")
    if path.is_dir() and _holds_files(path) and not any(next(path.glob(m), None) for m in marks):
        mark = f" (it has no {' or '.join(marks)})" if marks else ""
        what = f"but no earlier {kind}" if kind else "that are not an earlier output of this kind"
        raise OutputExistsError(
            f"{path} holds files {what}{mark}; writing there would delete or replace them, so nothing was "
            "written: choose a new or empty output directory"
        )


def _holds_files(path: Path) -> bool:
    """Whether a folder holds anything but empty folders and `writer_lock`'s lock files (a writer that died
    before its first output leaves only those, and its output folder counts as empty)."""
    return any(name != LOCK for _, _, files in os.walk(path) for name in files)  # symlinks not followed


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = True, replaces: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it is renamed to `path` in one step.

    A crash leaves at most a `.tmp` sibling behind (cleaned up on the next attempt) and never a
    half-written `path`. An existing `path` is replaced when `overwrite`; otherwise (say another process
    finished the same work first) the new copy is discarded and the existing one kept.

    Replacing deletes what `path` held, so it is refused (OutputExistsError, before any work) unless
    `path` is empty or holds the file `replaces` -- the mark of an earlier output of the same kind: a
    mistyped `--out ~/data` must not wipe a user's folder.
    """
    path = Path(path)
    if overwrite:
        check_output(path, replaces)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists() and not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
        elif path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
