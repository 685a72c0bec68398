"""The one way this project writes a file: a fresh temporary file beside the target, renamed over it.

    write_bytes_atomic(path, data)          write_text_atomic(path, text)
    with atomic_file(path, "wb") as f: fig.savefig(f, format="png")   # writers that take a file object
    with atomic_path(path) as tmp: writer(tmp)                         # writers that need a path

The temporary file is made by `tempfile.mkstemp` in the target's own directory: created with
O_CREAT | O_EXCL, so it is never an existing name (a symlink or a file planted there is not
opened, let alone written through), and it has a random name, so two writers never share one.
Only when the writer has finished is it renamed over the target (`os.replace`, atomic on
POSIX): a reader sees the old file or the new one, never half of one, and a symlink at the
target's name is replaced by the new file instead of having its target overwritten. On any
failure (including Ctrl-C) the temporary file is removed and the target is left as it was.

Temporary names are `.<name>.<random>.partial`: hidden, and recognisable by
`remove_leftovers`, which a job calls (holding the run lock, compute.runlock) to clear what a
killed writer left behind.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A fresh temporary file in `path`'s directory, created with O_EXCL by mkstemp."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
    os.replace(tmp, path)  # replaces a symlink at `path` rather than writing through it


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield the path of a fresh, empty temporary file beside `path` (created with O_EXCL);
    when the block ends without an error it is renamed over `path`, otherwise removed. For
    writers that insist on a path; they must write to the yielded name only."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_args) -> Iterator:
    """Yield a file object open on a fresh temporary file beside `path` (the very file mkstemp
    created, never reopened by name); closed and renamed over `path` when the block ends
    without an error. `mode` is "wb" or "w" (text; `open_args` such as encoding, newline)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        if mode == "w":
            open_args.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
        _publish(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def is_leftover(name: str) -> bool:
    """A temporary file name of this module's writers (or of the fixed `.<name>.partial`
    names older versions used, and the run directory's write probe)."""
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name.startswith(".write-check-")


def remove_leftovers(directory: str | os.PathLike) -> list[str]:
    """Remove the temporary files killed writers left in `directory` (not recursive; a symlink
    is removed, never its target; directories are left alone). Call it only while no writer
    of ours can be at work there (compute.runlock does, holding the run's lock). Returns the
    names removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if is_leftover(entry.name) and (entry.is_symlink() or entry.is_file(follow_symlinks=False)):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
