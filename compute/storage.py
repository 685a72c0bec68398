"""Where a run lives: a local directory or an object store (`s3://bucket/prefix`).

Every location a job takes (`--out`, `--run`, `--bundle`, `--picks`) goes through `place()`,
which parses it once and gives one line for what it cannot use. A `Place` is a path on a
pyarrow filesystem: local paths as they are, `s3://` (and S3-compatible stores) through
pyarrow's S3FileSystem, which reads the endpoint (`AWS_ENDPOINT_URL`), the region and the
credentials from the standard AWS environment variables and config files.

The commit rule on an object store, where there is no rename: an object becomes visible
whole, by one PUT, or not at all. So each output is written as one object under its final
key (`Place.write_bytes`), and a dataset of many objects (the sample chunks) is complete
only once the small commit object that lists them has been written, last. Locally the
same calls write a temporary file beside the target and rename it (compute.files).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from compute.files import write_bytes_atomic
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

    def __str__(self) -> str:
        return self.uri

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def size(self) -> int | None:
        """The file's size in bytes, None if there is no such file."""
        info = self.fs.get_file_info(self.path)
        return info.size if info.type == pafs.FileType.File else None

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        """A directory; on an object store, a prefix with at least one object under it."""
        if not self.remote:
            return self._type() == pafs.FileType.Directory
        return bool(self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True, recursive=False)))

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

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
            size = self.fs.get_file_info(self.path).size
            if size is not None and size > limit:
                raise InputError(f"{self} is {size:,} bytes, more than the {limit:,} allowed; is it the right file?")
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file so that readers see the old one or the new one, never a part:
        a temp file renamed over it locally, a single PUT on an object store."""
        if not self.remote:
            write_bytes_atomic(self.path, data)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def delete(self) -> None:
        if self.is_file():
            self.fs.delete_file(self.path)


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


def check_reachable(where: Place, write: bool = True) -> None:
    """Refuse, before any work, a store location that cannot be listed or written (no such
    bucket, no endpoint, no credentials): one line instead of an error after minutes of work."""
    if not where.remote:
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


LARGEST_BUNDLE_FILE = 16 << 30  # a 1024-px StyleGAN2 synthesis graph is about 120 MB in float32


def fetch_directory(location: str, cache: Path) -> Path:
    """A flat directory in an object store (a bundle: manifest.json and its graphs) as a local
    copy under `cache`, one per URI, downloaded again only when the store's manifest.json
    differs from the copy's. Names are checked as they are listed (plain names only); what the
    files hold is checked by whoever opens the copy (compute.bundle.load_bundle)."""
    where = place(location)
    check_reachable(where, write=False)
    local = cache / local_name(where)
    manifest = where / "manifest.json"
    if not manifest.is_file():
        raise InputError(f"no manifest.json in {where}; pass the bundle's directory")
    wanted = manifest.read_bytes(limit=1 << 24)
    if (local / "manifest.json").is_file() and (local / "manifest.json").read_bytes() == wanted:
        return local
    infos = where.fs.get_file_info(pafs.FileSelector(where.path, recursive=False))
    files = [i for i in infos if i.type == pafs.FileType.File]
    for info in files:
        if not _plain(info.base_name) == info.base_name or info.base_name.startswith("."):
            raise InputError(f"{where} holds an object with an unusable name {info.base_name!r}; remove it")
        if info.size is not None and info.size > LARGEST_BUNDLE_FILE:
            raise InputError(f"{where}/{info.base_name} is {info.size:,} bytes, more than a bundle's graph can be")
    cache.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{local.name}.", dir=cache))
    try:
        for info in files:
            with where.fs.open_input_stream(info.path) as src, open(temp / info.base_name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        if local.exists():
            shutil.rmtree(local)
        os.replace(temp, local)  # the copy appears whole
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return local


def _plain(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] or "_"


def local_name(where: Place) -> str:
    """The directory name of a local copy of `where`: one per URI, readable, a plain name."""
    return f"{hashlib.sha256(where.uri.encode()).hexdigest()[:16]}-{_plain(where.name)}"


@contextmanager
def fetched_file(location: str | os.PathLike, limit: int = 1 << 26) -> Iterator[Path]:
    """A file given as a location (a picks file: small) as a local path: itself, or for an
    object store a temporary copy under the same name, removed when the block ends."""
    if not is_remote(location):
        yield Path(location)
        return
    where = place(location)
    if not where.is_file():
        raise InputError(f"no file {where}; check the location")
    data = where.read_bytes(limit=limit)
    with tempfile.TemporaryDirectory(prefix="vectorfind-fetched-") as tmp:
        local = Path(tmp) / _plain(where.name)
        local.write_bytes(data)
        yield local
