"""Model bundle directories: read and validate one (the contract written by
export/onnx_bundle.py), where the built-in ones are cached, and the atomic directory writer
that bundles and editors share."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto

from vectors.errors import InputError
from vectors.names import NameRefused, check_score_names, file_name

REQUIRED_GRAPHS = ("mapping", "synthesis", "scorer")
REQUIRED_KEYS = ("format_version", "model", "z_dim", "label_dim", "w_dim", "resolution",
                 "score_names", "group_medians", "files")


class BundleError(InputError):
    """A bundle directory is missing, incomplete, corrupt or inconsistent."""


def cache_root() -> Path:
    """Where the built-in bundles are exported on first use ($VECTORFIND_CACHE)."""
    return Path(os.environ.get("VECTORFIND_CACHE", Path.home() / ".cache" / "vectorfind"))


def write_directory(out: Path, files: dict[str, bytes], manifest: dict, manifest_name: str = "manifest.json") -> None:
    """Write `files` (name -> bytes) and then the manifest into `out`, replacing it if it exists.

    Everything goes to a temporary sibling directory that is renamed into place at the end,
    so an interrupted write never leaves a directory that looks like a bundle or an editor.
    """
    from compute.files import write_bytes_atomic, write_text_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in (*files, manifest_name):
        file_name(name, "bundle file name")  # one component: nothing is written outside `out`
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name, data in files.items():
            write_bytes_atomic(staging / name, data)
        # The manifest goes last: a staging directory without one is never a bundle.
        write_text_atomic(staging / manifest_name, json.dumps(manifest, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            out.unlink()  # a link (or a file) at the name is replaced, never written through
        if out.exists():
            # A fresh empty directory (never a planted name) that the old one replaces, then removed.
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.retired-", dir=out.parent))
            os.replace(out, retired)
            staging.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    manifest_sha256: str
    source: str | None = None  # the object store location `path` is a local copy of (a run records it)

    @property
    def score_names(self) -> list[str]:
        return list(self.manifest["score_names"])

    @property
    def z_dim(self) -> int:
        return int(self.manifest["z_dim"])

    @property
    def w_dim(self) -> int:
        return int(self.manifest["w_dim"])

    @property
    def num_ws(self) -> int | None:
        """Layers of per-layer codes the synthesis takes ([B, L, w_dim]); None: one w ([B, w_dim])."""
        value = self.manifest.get("num_ws")
        return int(value) if value is not None else None

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    def has_graph(self, stem: str) -> bool:
        return stem in self.manifest["files"]

    def graph_bytes(self, stem: str) -> bytes:
        """The graph's bytes, read again through the same checks as load_bundle: inside the
        bundle and equal to the manifest's sha256 (so what runs is what was checked)."""
        if not self.has_graph(stem):
            raise BundleError(f"bundle {self.path} has no '{stem}' graph")
        file = entry_path(self.path, stem, self.manifest["files"][stem], self.path / "manifest.json")
        return _read_checked(file, self.manifest["files"][stem])


def load_bundle(path, check_graphs: bool = True) -> Bundle:
    """Open a bundle directory, checking manifest, file hashes and (optionally) onnx.checker.

    Checked once, here, before any graph runs: score names are safe names (they become
    columns and file names), every `files` entry is a file in the bundle directory itself
    (no absolute paths, '..' or links out) with a sha256 that matches, and no graph keeps
    tensors in external data files (ONNX Runtime would resolve them against the working
    directory, and the manifest's hash would not cover them)."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not path.is_dir():
        raise BundleError(f"bundle directory not found: {path}")
    if not manifest_file.is_file():
        raise BundleError(f"{path} is not a bundle: no manifest.json (export one with `python -m jobs.export`)")
    if manifest_file.resolve().parent != path.resolve():
        raise BundleError(f"{manifest_file} is a link to {manifest_file.resolve()}, outside the bundle directory; "
                          f"a bundle holds its manifest itself: export the bundle again")
    raw = manifest_file.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_file} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_file} is not a table of settings (JSON object); export the bundle again")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_file} lacks keys: {', '.join(missing)}")
    _check_types(manifest, manifest_file)  # score names: any safe ones, the method picks from them
    missing_graphs = [g for g in REQUIRED_GRAPHS if g not in manifest["files"]]
    if missing_graphs:
        raise BundleError(f"{manifest_file} lists no {', '.join(missing_graphs)} graph")

    for stem, entry in manifest["files"].items():
        file, _, model = checked_graph(path, stem, entry, manifest_file)
        if check_graphs:
            try:
                onnx.checker.check_model(model)
            except Exception as exc:  # checker and protobuf raise several types
                raise BundleError(f"{file} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
            _check_dims(stem, model, manifest, file)
    return Bundle(path=path, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest())


def _check_types(manifest: dict, manifest_file: Path) -> None:
    """Values of the wrong type are a one-line error here, not a traceback in a later stage."""
    def bad(key: str, what: str):
        return BundleError(f"{manifest_file}: {key} must be {what}, got {manifest.get(key)!r}; "
                           f"export the bundle again")

    for key in ("z_dim", "label_dim", "w_dim", "resolution"):
        value = manifest[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "label_dim" else 1):
            raise bad(key, "a positive integer" if key != "label_dim" else "an integer >= 0")
    if "num_ws" in manifest and (not isinstance(manifest["num_ws"], int) or isinstance(manifest["num_ws"], bool)
                                 or manifest["num_ws"] < 1):
        raise bad("num_ws", "a positive integer (the synthesis layers of per-layer codes)")
    names = manifest["score_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise bad("score_names", "a list of names")
    try:  # they become table columns and file names: safe, unique, not a column of the tables
        check_score_names(names, str(manifest_file), "export the bundle again with other --score-names")
    except NameRefused as exc:
        raise BundleError(str(exc)) from exc
    medians = manifest["group_medians"]
    if not isinstance(medians, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in medians.items()):
        raise bad("group_medians", "a table that maps score names to numbers")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                              for e in files.values()):
        raise bad("files", "a table of graphs, each with a file name")


def entry_path(path: Path, stem: str, entry: dict, manifest_file: Path) -> Path:
    """The file of a manifest `files` entry: a plain file name in the bundle directory that
    exists and resolves inside it (a symbolic link to elsewhere is refused), with a sha256."""
    name = entry.get("file")
    try:
        file_name(name)
    except NameRefused:
        raise BundleError(f"{manifest_file}: the '{stem}' entry names {name!r}, not a file name inside the "
                          f"bundle (absolute paths, '..' and separators are refused); a bundle's graphs are "
                          f"files in its own directory: export the bundle again") from None
    file = Path(path) / name
    if not file.is_file():
        raise BundleError(f"bundle {path} is missing {name}")
    root, target = Path(path).resolve(), file.resolve()
    if target.parent != root:
        raise BundleError(f"{file} is a link to {target}, outside the bundle directory {root}; a bundle holds "
                          f"its graphs itself: copy the file into the bundle or export the bundle again")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BundleError(f"{manifest_file}: the '{stem}' entry has no sha256 of {name} (every graph's hash is "
                          f"required and checked); export the bundle again")
    return file


def checked_graph(path: Path, stem: str, entry, manifest_file: Path) -> tuple[Path, bytes, onnx.ModelProto]:
    """The file, bytes and model of one graph entry of a bundle (or editor) directory: inside
    the directory, equal to its required sha256, and self-contained (no external data)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        raise BundleError(f"{manifest_file}: the '{stem}' entry must be a table with a file name, got {entry!r}; "
                          f"export the bundle again")
    file = entry_path(path, stem, entry, manifest_file)
    data = _read_checked(file, entry)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises several types
        raise BundleError(f"{file} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    external = external_data_tensors(model)
    if external:
        raise BundleError(f"{file} keeps tensor {external[0][0]!r} in an external data file "
                          f"({external[0][1]!r}), which the manifest's sha256 does not cover and which ONNX "
                          f"Runtime would look for in the working directory, not the bundle; bundle graphs "
                          f"are self-contained: export the bundle again")
    return file, data, model


def _read_checked(file: Path, entry: dict) -> bytes:
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise BundleError(f"{file} does not match the sha256 in the manifest (corrupt or edited); export the "
                          f"bundle again")
    return data


def _subgraphs(nodes):
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph in it."""
    yield graph
    yield from _subgraphs(graph.node)


def stored_tensors(model: onnx.ModelProto):
    """Every tensor the model stores: initializers (sparse ones too) and node attributes, in
    the graph, its subgraphs, its functions and its training graphs."""
    tops = [model.graph] + [g for t in model.training_info for g in (t.initialization, t.algorithm)]
    graphs = [g for top in tops for g in _graphs(top)] + list(_subgraphs(n for f in model.functions for n in f.node))
    for graph in graphs:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparse = ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else [])
            for tensor in sparse + list(attribute.sparse_tensors):
                yield from (tensor.values, tensor.indices)


def external_data_tensors(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor whose data lives outside the model's bytes."""
    found = []
    for tensor in stored_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            found.append((tensor.name, location))
    return found


def _static_dims(values) -> list[list]:
    """Each graph input's or output's dims: an int where static, None where dynamic."""
    return [[d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values]


def _check_dims(stem: str, model, manifest: dict, file: Path) -> None:
    """The manifest's dims must be the graphs' own, or every later stage misreads them."""
    expected = {"mapping": ((1, manifest["z_dim"]), (1, manifest["w_dim"])),
                "synthesis": ((-1, manifest["w_dim"]), None),
                "scorer": (None, (1, len(manifest["score_names"])))}.get(stem)
    if expected is None:
        return
    ins, outs = _static_dims(model.graph.input), _static_dims(model.graph.output)
    if stem == "synthesis" and ins and len(ins[0]) in (2, 3):
        layers = ins[0][1] if len(ins[0]) == 3 else None
        if (len(ins[0]) == 3) != ("num_ws" in manifest) or (layers is not None and layers != manifest["num_ws"]):
            raise BundleError(f"{file.name} takes codes of shape {ins[0]} but the manifest says num_ws "
                              f"{manifest.get('num_ws', 'absent (one w per image)')}; export the bundle again")
    for (where, dims), want in zip((("input", ins[0]), ("output", outs[0])), expected):
        if want is None:
            continue
        axis, size = want
        got = dims[axis] if dims and -len(dims) <= axis < len(dims) else None
        if got is not None and got != size:
            what = {"scorer": f"scores but the manifest names {size}"}.get(stem, f"dims but the manifest says {size}")
            raise BundleError(f"{file.name} {where}s {got} {what}; the manifest does not describe this graph "
                              f"(export the bundle again)")
