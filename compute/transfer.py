"""Whole directories and files between this machine and an object store, where a reader or
writer needs them on disk: a model bundle or an editor (`--bundle s3://...`: ONNX Runtime
opens graphs from files) and a picks file are fetched; a bundle or an editor that
jobs.export made is put up. A run is never copied: its stages read and write it where it
is (compute.storage)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from compute.storage import Place, check_reachable, is_remote, place
from vectors.errors import InputError

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


def check_out_prefix(where: Place, overwrite: bool) -> list[str]:
    """Refuse a store prefix that cannot be written, or that holds objects without `overwrite`
    (before any work: jobs.export calls it first); returns the names already there."""
    check_reachable(where)
    before = where.files()
    if before and not overwrite:
        raise InputError(f"--out {where} holds objects; pass --overwrite to replace them")
    return before


def upload_directory(local: Path, where: Place, overwrite: bool = False) -> list[str]:
    """Put a flat directory made on this machine (a bundle or an editor: graphs and
    manifest.json) under the store prefix `where`: each file one PUT, the manifest last, so a
    prefix without one is never a bundle, and a reader that finds the new manifest with an old
    graph refuses it by the manifest's sha256. Objects of an earlier export that the new one
    lacks are removed after. A prefix that holds objects is replaced only with `overwrite`.
    Returns the names written."""
    before = check_out_prefix(where, overwrite)
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    for name in sorted(names, key=lambda n: n == "manifest.json"):  # the manifest last
        with open(local / name, "rb") as src, where.fs.open_output_stream((where / name).path) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    for name in before:
        if name not in names:
            (where / name).delete()
    return names
