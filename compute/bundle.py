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

from vectors.errors import InputError

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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        # The manifest goes last: a staging directory without one is never a bundle.
        (staging / manifest_name).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
        if out.exists():
            retired = out.with_name(f".{out.name}.retired")
            shutil.rmtree(retired, ignore_errors=True)
            out.rename(retired)
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
        if not self.has_graph(stem):
            raise BundleError(f"bundle {self.path} has no '{stem}' graph")
        return (self.path / self.manifest["files"][stem]["file"]).read_bytes()


def load_bundle(path, check_graphs: bool = True) -> Bundle:
    """Open a bundle directory, checking manifest, file hashes and (optionally) onnx.checker."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not path.is_dir():
        raise BundleError(f"bundle directory not found: {path}")
    if not manifest_file.is_file():
        raise BundleError(f"{path} is not a bundle: no manifest.json (export one with `python -m jobs.export`)")
    raw = manifest_file.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_file} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_file} lacks keys: {', '.join(missing)}")
    _check_types(manifest, manifest_file)  # any score names are valid: the method picks from them
    missing_graphs = [g for g in REQUIRED_GRAPHS if g not in manifest["files"]]
    if missing_graphs:
        raise BundleError(f"{manifest_file} lists no {', '.join(missing_graphs)} graph")

    for stem, entry in manifest["files"].items():
        file = path / entry["file"]
        if not file.is_file():
            raise BundleError(f"bundle {path} is missing {entry['file']}")
        data = file.read_bytes()
        if "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{file} does not match the sha256 in the manifest (corrupt or edited)")
        if check_graphs:
            try:
                model = onnx.load_from_string(data)
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
    medians = manifest["group_medians"]
    if not isinstance(medians, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in medians.items()):
        raise bad("group_medians", "a table that maps score names to numbers")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                              for e in files.values()):
        raise bad("files", "a table of graphs, each with a file name")


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
