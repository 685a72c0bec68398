"""Where a run lives, and the one way to its files: a local directory or an object store (`s3://bucket/prefix`).

Every location a job takes (`--out`, `--run`, `--bundle`, `--picks`) goes through `place()`,
which parses it once and gives one line for what it cannot use. A `Place` is a path on a
pyarrow filesystem: local paths as they are, `s3://` (and S3-compatible stores) through
pyarrow's S3FileSystem, which reads the endpoint (`AWS_ENDPOINT_URL`), the region and the
credentials from the standard AWS environment variables and config files.

The stages never open a run's files themselves: they hold the run as a Place and read,
list and write through its methods (and compute.tables' Parquet readers and writers, which
take a Place), so the same code serves a directory and a bucket. Beneath them sit only the
local atomic writer (compute.files), the run lock (compute.runlock) and the samples
dataset's layout (compute.samples_store).

The commit rule on an object store, where there is no rename: an object becomes visible
whole, by one PUT, or not at all. So each output is written as one object under its final
key (`Place.write_bytes`), and a dataset of many objects (the sample chunks) is complete
only once the small commit object that lists them has been written, last. Locally the
same calls write a temporary file beside the target and rename it (compute.files).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from compute.files import atomic_file, remove_leftovers
from vectors.errors import InputError

SCHEMES = ("s3",)  # object stores this project tests (tests/test_object_storage.py) and supports


def is_remote(location: str | os.PathLike | None) -> bool:
    """Whether a location names an object store (`scheme://...`) rather than a local path."""
    return isinstance(location, str) and "://" in location


@dataclass(frozen=True)
class Place:
    """A file or directory on a filesystem: `fs` and the `path` on it; `uri` for messages."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def __truediv__(self, name: str) -> Place:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a plain name: {name!r}")
        sep = "" if self.uri.endswith("/") else "/"
        return Place(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri}{sep}{name}")

    def joinpath(self, relative: str) -> Place:
        """The place `relative` ("a/b/c", plain names only) names below this one."""
        here = self
        try:
            for name in relative.split("/"):
                here = here / name
        except ValueError as exc:  # an empty, "." or ".." part: a path read from a file, so input
            raise InputError(f"{relative!r} is not a plain path below {self}") from exc
        return here

    def __str__(self) -> str:
        return self.uri

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1]

    @property
    def parent(self) -> Place:
        path, uri = self.path.rstrip("/"), self.uri.rstrip("/")
        return Place(self.fs, path.rsplit("/", 1)[0] or "/", uri.rsplit("/", 1)[0] or "/")

    def key(self) -> str:
        """One name per file or directory, whatever way it was reached (locally: links resolved)."""
        return self.uri if self.remote else os.path.realpath(self.path)

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def size(self) -> int | None:
        """The file's size in bytes, None if there is no such file."""
        info = self._info()
        return info.size if info.type == pafs.FileType.File else None

    def mtime(self) -> float | None:
        """When the file was last written (seconds since the epoch); None if there is no such file."""
        info = self._info()
        return info.mtime.timestamp() if info.type == pafs.FileType.File and info.mtime is not None else None

    def is_file(self) -> bool:
        """A file (locally: a link to one counts, a FIFO or device does not)."""
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A directory; on an object store, a prefix with at least one object under it."""
        if not self.remote:
            return self._info().type == pafs.FileType.Directory
        return bool(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=False)))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def is_regular(self) -> bool:
        """A regular file in its own right: locally not a link and not a FIFO or device (what a
        run's metadata names may be anything, and opening a FIFO would wait forever)."""
        if self.remote:
            return self.is_file()
        try:
            return stat.S_ISREG(os.lstat(self.path).st_mode)
        except OSError:
            return False

    def identity(self) -> tuple | None:
        """What changes when a writer replaces the file (locally a new inode, in a store new
        bytes); None if there is none."""
        if self.remote:  # a store's times have whole seconds: its bytes tell a rewrite apart
            return (self.size(), self.sha256()) if self.is_file() else None
        try:
            s = os.lstat(self.path)
        except OSError:
            return None
        return s.st_ino, s.st_mtime_ns, s.st_size

    def files(self, suffix: str = "") -> list[str]:
        """Names of the files directly under this directory ending in `suffix`, sorted; hidden
        names (`.` temp files, `_` commit objects) are left out."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=False))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                      and not i.base_name.startswith((".", "_")))

    def read_bytes(self, limit: int | None = None) -> bytes:
        """The file's bytes; with `limit`, refused when larger (a size read from the store, checked
        before a byte is read)."""
        if limit is not None:
            size = self._info().size
            if size is not None and size > limit:
                raise InputError(f"{self} is {size:,} bytes, more than the {limit:,} allowed; is it the right file?")
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8", limit: int | None = None) -> str:
        return self.read_bytes(limit).decode(encoding)

    def sha256(self) -> str:
        """The sha256 of the file's bytes, read in 1 MiB blocks."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    @contextmanager
    def open_write(self, text: bool = False, **text_args) -> Iterator:
        """A file object for the whole new file, made visible when the block ends without an
        error and not at all otherwise: locally a temp file renamed over the target
        (compute.files: never written through a link planted there), in a store one PUT."""
        if not self.remote:
            with atomic_file(self.path, "w" if text else "wb", **text_args) as f:
                yield f
            return
        buffer = io.BytesIO()
        if text:
            wrapper = io.TextIOWrapper(buffer, encoding=text_args.get("encoding", "utf-8"),
                                       newline=text_args.get("newline"), write_through=True)
            yield wrapper
            wrapper.flush()
            wrapper.detach()
        else:
            yield buffer
        with self.fs.open_output_stream(self.path) as f:
            f.write(buffer.getbuffer())

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file so that readers see the old one or the new one, never a part."""
        with self.open_write() as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def replace_directory(self, target: Place) -> None:
        """Make this local directory `target`, whole, by one rename (a link planted at the
        target's name is replaced, not followed); our temp files in it are removed first."""
        if self.remote or target.remote:
            raise ValueError("a directory is renamed only on disk; an object store commits by a commit object")
        remove_leftovers(self.path)  # writes that never finished (files and links, never a directory)
        if os.path.islink(target.path):
            os.unlink(target.path)
        os.replace(self.path, target.path)

    def mkdir(self) -> None:
        """Make the directory (and its parents) locally; a store has no directories to make."""
        if not self.remote:
            os.makedirs(self.path, exist_ok=True)

    def delete(self) -> None:
        """Remove the file (locally a link itself, never its target); nothing if there is none."""
        if not self.remote:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        elif self.is_file():
            self.fs.delete_file(self.path)


def as_place(location: Place | str | os.PathLike) -> Place:
    """A Place as it is; a location parsed by `place`."""
    return location if isinstance(location, Place) else place(location)


def place(location: str | os.PathLike) -> Place:
    """Parse a location once, at the boundary: a local path, or a URI of a supported object
    store. Anything else is one line naming the problem."""
    if not is_remote(location):
        path = Path(location).absolute()
        return Place(pafs.LocalFileSystem(), str(path), str(path))
    text = str(location)
    scheme = text.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise InputError(f"{text}: unsupported storage scheme {scheme}://; use a local path or s3://bucket/prefix")
    bucket_and_key = text.split("://", 1)[1].strip("/")
    if not bucket_and_key or "//" in bucket_and_key or any(part in (".", "..") for part in bucket_and_key.split("/")):
        raise InputError(f"{text}: not a usable object store location; write s3://bucket/prefix")
    try:
        fs, path = pafs.FileSystem.from_uri(f"{scheme}://{bucket_and_key}")
    except Exception as exc:  # pyarrow raises several types for a malformed URI or bad configuration
        raise InputError(f"{text}: {str(exc).splitlines()[0]}") from exc
    return Place(fs, path.rstrip("/"), f"{scheme}://{bucket_and_key}")


def check_reachable(where: Place, write: bool = True, create: bool = False) -> None:
    """Refuse, before any work, a store location that cannot be listed or written (no such
    bucket, no endpoint, no credentials): one line instead of an error after minutes of work.
    A local directory is checked only with `create` (made, and a probe file written: read-only
    or special file systems, a file in the way)."""
    if not where.remote:
        if create:
            try:
                where.mkdir()
                fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=where.path)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise InputError(f"cannot write to {where}: {exc.strerror or exc}; choose a writable directory") \
                    from exc
        return
    bucket = where.path.split("/", 1)[0]
    try:
        info = where.fs.get_file_info(bucket)
        where.fs.get_file_info(pafs.FileSelector(where.path, allow_not_found=True, recursive=False))
    except Exception as exc:
        raise InputError(f"cannot reach {where}: {str(exc).splitlines()[0]}; check AWS_ENDPOINT_URL, the "
                         f"credentials and the bucket") from exc
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"no bucket {bucket} at the configured endpoint; create it first (or check "
                         f"AWS_ENDPOINT_URL)")
    if not write:
        return
    probe = where / f".write-check-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.delete()
    except Exception as exc:
        raise InputError(f"cannot write to {where}: {str(exc).splitlines()[0]}; check the credentials' "
                         f"permissions on the bucket") from exc
