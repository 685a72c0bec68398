"""A model bundle from the user's own ONNX graphs: a mapping, a synthesis and a scorer file.

Each file is read as one self-contained graph (load_user_graph: external data only from
the graph's own directory, inlined) and checked before anything is written: onnx.checker, one input and one output,
a dynamic batch axis on both, float32 where the pipeline feeds or reads it, and dims that
agree between the graphs (mapping z [B, z_dim] -> w [B, w_dim]; synthesis w [B, w_dim] or
ws [B, L, w_dim] -> image [B, 3, R, R]; scorer image -> scores [B, P]). Then seeded codes
run through ONNX Runtime, a batch of 2 and one of 3 (a batch axis that is declared dynamic
but fixed inside the graph fails there), and every output must be finite and of its shape.

The bundle holds the mapping and synthesis with their input and output renamed to the
contract's names (everything else as the user made it), the scorer with the adapter in
front (export/scorer_adapter.py), and the manifest export_bundle writes. There is no torch
side to compare with: the parity figures are None and "checked" says what was checked.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from compute.bundle import stored_tensors
from compute.files import sha256_file
from export.onnx_bundle import (
    FORMAT_VERSION,
    GRAPHS,
    ExportError,
    checked_score_names,
    cpu_session,
    measure_medians,
    write_bundle,
)
from export.scorer_adapter import (
    INPUT,
    ScorerAdapter,
    adapt_scorer,
    free_name,
    rename_value,
)

EXPORTER = "user ONNX graphs"
BATCHES = (2, 3)  # a second size proves the batch axis is dynamic
PROTOBUF_LIMIT = 2**31 - 1  # the largest serialised ModelProto; a self-contained graph must fit
CHECKED = ("onnx.checker (full), one input and one output per graph, dynamic batch axis, dims agree; "
           "ONNX Runtime on seeded batches of 2 and 3 codes: finite outputs of the stated shapes")


def user_bundle(mapping: Path, synthesis: Path, scorer: Path, score_names: list[str], adapter: ScorerAdapter,
                out: Path, overwrite: bool = False, median_samples: int = 256, seed: int = 0) -> dict:
    """Check the three graphs, write the bundle `out` and return its manifest (ExportError on any
    problem). `score_names` name the scorer's output columns in order (a list, or "a,b,c")."""
    out, paths = Path(out), {"mapping": Path(mapping), "synthesis": Path(synthesis), "scorer": Path(scorer)}
    score_names = _checked_names(score_names)
    if not isinstance(median_samples, int) or median_samples < 1:
        raise ExportError(f"median_samples must be a positive integer, got {median_samples!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    models = {stem: _load(stem, path) for stem, path in paths.items()}
    io = {stem: _one_input_output(stem, paths[stem], model) for stem, model in models.items()}
    dims = {stem: (_dims(stem, paths[stem], i, "input"), _dims(stem, paths[stem], o, "output"))
            for stem, (i, o) in io.items()}
    z_dim, w_dim, num_ws = _generator_dims(paths, dims)

    where = {stem: f"{stem} graph {paths[stem]}" for stem in paths}
    names = {stem: (i.name, o.name) for stem, (i, o) in io.items()}
    graphs = {"mapping": rename_graph_io(models["mapping"], "z", "w"),
              "synthesis": rename_graph_io(models["synthesis"], "ws" if num_ws else "w", "image")}
    sessions = {stem: _session(graphs[stem], where[stem]) for stem in graphs}
    rng, images = np.random.default_rng(seed), []
    for batch in BATCHES:
        z = rng.standard_normal((batch, z_dim)).astype(np.float32)
        w = _run(sessions["mapping"], z, (batch, w_dim), where["mapping"])
        w_dim = w.shape[1]
        codes = np.ascontiguousarray(np.broadcast_to(w[:, None], (batch, num_ws, w_dim))) if num_ws else w
        images.append(_run(sessions["synthesis"], codes, (batch, 3, None, None), where["synthesis"]))
    resolution, other = images[0].shape[2:]
    if resolution != other:
        raise ExportError(f"{where['synthesis']} outputs {resolution}x{other} images; the pipeline needs square "
                          f"images [B, 3, R, R]")

    try:
        adapted = adapt_scorer(models["scorer"].SerializeToString(), adapter, resolution)
    except ValueError as exc:
        raise ExportError(f"{where['scorer']}: {exc}") from exc
    graphs["scorer"] = rename_graph_io(adapted, INPUT, "scores")
    scorer_session = _session(graphs["scorer"], where["scorer"])
    for image in images:
        scores = _run(scorer_session, image, (len(image), None), where["scorer"])
        if scores.shape[1] != len(score_names):
            raise ExportError(f"{where['scorer']} outputs {scores.shape[1]} scores per image but "
                              f"{len(score_names)} score names are given ({', '.join(score_names)}); "
                              f"name each output column once")

    low, high = (float(f(np.concatenate([i.ravel() for i in images]))) for f in (np.min, np.max))
    if max(-low, high) > 1.5:
        print(f"note: the synthesis gave images in [{low:.3g}, {high:.3g}]; the bundle's images are in [-1, 1] "
              f"and the scorer adapter maps [-1, 1]", flush=True)
    print(f"measuring default group medians on {median_samples} seeded samples", flush=True)
    medians = measure_medians(graphs, z_dim, score_names, median_samples, seed)
    sources = {stem: {"file": paths[stem].name, "sha256": sha256_file(paths[stem]), "input": names[stem][0],
                      "output": names[stem][1]} for stem in paths}
    files = {stem: {"file": f"{stem}.onnx", "input": i, "output": o} for stem, i, o in GRAPHS}
    files["synthesis"]["input"] = "ws" if num_ws else "w"
    for stem, data in graphs.items():
        files[stem]["sha256"] = hashlib.sha256(data).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": "onnx",
        "source_sha256": hashlib.sha256("".join(s["sha256"] for s in sources.values()).encode()).hexdigest(),
        "z_dim": z_dim,
        "label_dim": 0,
        "w_dim": w_dim,
        "resolution": int(resolution),
        **({"num_ws": num_ws} if num_ws else {}),
        "score_names": score_names,
        "group_medians": medians,
        "group_medians_source": f"median of {median_samples} seeded samples (seed {seed})",
        "opset": max(_opset(model) for model in models.values()),  # renaming and the adapter keep it
        "exporter": EXPORTER,
        "parity": {"codes": BATCHES[0], "w": None, "image": None, "scores": None,
                   "relative": {"w": None, "image": None, "scores": None}, "tolerance": None,
                   "checked": CHECKED, "batches": list(BATCHES), "image_range": [low, high]},
        "files": files,
        "scorer_adapter": adapter.to_dict(),
        "sources": sources,  # the user's files; source_sha256 is the sha256 of their three sha256s in this order
    }
    write_bundle(out, graphs, manifest, overwrite=overwrite)
    return manifest


def _checked_names(score_names) -> list[str]:
    names = [n.strip() for n in score_names.split(",")] if isinstance(score_names, str) else list(score_names or [])
    return checked_score_names(names)


def load_user_graph(path: Path, what: str) -> onnx.ModelProto:
    """A user's ONNX file as one self-contained model (ExportError otherwise).

    Tensors kept in external data files are read from the graph's own directory only (never
    the working directory, as ONNX Runtime would for a graph given as bytes): a location
    must be a relative path that stays inside that directory, links included, and its bytes
    are inlined, so the bundle holds every weight and its hashes cover them."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{what} {path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf and onnx raise several types
        raise ExportError(f"{what} {path} is not an ONNX model: {_first_line(exc)}") from exc
    external = [t for t in stored_tensors(model) if t.data_location == TensorProto.EXTERNAL or len(t.external_data)]
    if not external:
        return model
    base, reads = path.parent.resolve(), []
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve() if location and "\x00" not in location else None
        if target is None or Path(location).is_absolute() or ".." in Path(location).parts \
                or base not in target.parents:
            raise ExportError(f"{what} {path} keeps tensor {tensor.name!r} in external data at {location!r}, outside "
                              f"the graph's own directory {base}; external data must be a relative path inside "
                              f"it (or save the graph with its weights inside: onnx.save(model, path))")
        if not target.is_file():
            raise ExportError(f"{what} {path} keeps tensor {tensor.name!r} in external data {location!r}, which is "
                              f"not a file next to the graph; copy the graph's data files with it")
        try:
            offset, size = int(info.get("offset", 0)), target.stat().st_size
            length = int(info["length"]) if "length" in info else size - offset
        except (OSError, ValueError) as exc:
            raise ExportError(f"{what} {path}: the external data of tensor {tensor.name!r} ({location!r}) cannot be "
                              f"read: {_first_line(exc)}") from exc
        if offset < 0 or length < 0 or offset + length > size:
            raise ExportError(f"{what} {path}: tensor {tensor.name!r} reads bytes {offset}-{offset + length} of "
                              f"{location!r}, which has {size}; the external data does not match the graph")
        reads.append((tensor, target, offset, length))
    if model.ByteSize() + sum(r[3] for r in reads) > PROTOBUF_LIMIT:
        raise ExportError(f"{what} {path} with its external data is over 2 GB, more than one self-contained ONNX "
                          f"graph can hold; bundles store graphs whole")
    for tensor, target, offset, length in reads:
        with open(target, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length)
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def _load(stem: str, path: Path) -> onnx.ModelProto:
    model = load_user_graph(path, f"{stem} graph")
    if not model.graph.node or not model.opset_import:
        raise ExportError(f"{stem} graph {path} is not an ONNX model (no graph nodes or opset in it)")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker raises several types
        raise ExportError(f"{stem} graph {path} fails onnx.checker: {_first_line(exc)}") from exc
    return model


def _one_input_output(stem: str, path: Path, model: onnx.ModelProto) -> tuple:
    """The graph's input and output (weights that some exporters list as inputs do not count)."""
    weights = {t.name for t in model.graph.initializer}
    inputs, outputs = [v for v in model.graph.input if v.name not in weights], list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"{stem} graph {path} has {len(inputs)} input(s) ({', '.join(v.name for v in inputs)}) "
                          f"and {len(outputs)} output(s) ({', '.join(v.name for v in outputs)}); a bundle graph "
                          f"has exactly one of each")
    for value, where in ((inputs[0], "input"), (outputs[0], "output")):
        kind = value.type.tensor_type.elem_type
        if kind != TensorProto.FLOAT and not (stem == "scorer" and where == "input"):
            raise ExportError(f"{stem} graph {path}: {where} '{value.name}' is "
                              f"{TensorProto.DataType.Name(kind)}; the pipeline feeds and reads float32")
    return inputs[0], outputs[0]


def _dims(stem: str, path: Path, value, where: str) -> list[int | None]:
    """A declared shape, None where a dim is dynamic; its batch axis must be dynamic."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise ExportError(f"{stem} graph {path}: {where} '{value.name}' declares no shape; export it with shapes")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    if dims and dims[0] is not None:
        raise ExportError(f"{stem} graph {path}: {where} '{value.name}' has a fixed batch size {dims[0]}; re-export "
                          f"it with a dynamic batch axis: torch.onnx.export(..., dynamic_axes={{'{value.name}': "
                          f"{{0: 'batch'}}, ...}}) for its input and output")
    return dims


def _generator_dims(paths: dict[str, Path], dims: dict) -> tuple[int, int | None, int | None]:
    """z_dim, w_dim (None: known once the mapping runs) and num_ws from the declared shapes."""
    (z_in, w_out), (codes, image), (_, scores) = dims["mapping"], dims["synthesis"], dims["scorer"]
    where = {stem: f"{stem} graph {path}" for stem, path in paths.items()}
    if len(z_in) != 2 or z_in[1] is None:
        raise ExportError(f"{where['mapping']} takes {_shape(z_in)}; it must take codes z [B, z_dim] with a "
                          f"fixed z_dim")
    if len(w_out) != 2:
        raise ExportError(f"{where['mapping']} outputs {_shape(w_out)}; it must output w [B, w_dim] (export a "
                          f"mapping that broadcasts w to per-layer codes without the broadcast)")
    if len(codes) not in (2, 3) or (len(codes) == 3 and codes[1] is None):
        raise ExportError(f"{where['synthesis']} takes {_shape(codes)}; it must take w [B, w_dim] or per-layer "
                          f"codes ws [B, L, w_dim] with a fixed L")
    if None not in (w_out[1], codes[-1]) and w_out[1] != codes[-1]:
        raise ExportError(f"{where['mapping']} outputs w of {w_out[1]} dims but {where['synthesis']} takes "
                          f"{codes[-1]}; the two graphs are not parts of one generator")
    if len(image) != 4 or image[1] not in (None, 3):
        raise ExportError(f"{where['synthesis']} outputs {_shape(image)}; it must output images [B, 3, R, R]")
    if None not in image[2:] and image[2] != image[3]:
        raise ExportError(f"{where['synthesis']} outputs {image[2]}x{image[3]} images; the pipeline needs square "
                          f"images [B, 3, R, R]")
    if len(scores) != 2:
        raise ExportError(f"{where['scorer']} outputs {_shape(scores)}; it must output scores [B, P]")
    return z_in[1], w_out[1] or codes[-1], codes[1] if len(codes) == 3 else None


def rename_graph_io(model: onnx.ModelProto | bytes, new_input: str, new_output: str) -> bytes:
    """The graph with its one input and output renamed (in a copy), everything else kept; e.g.
    an adapted scorer for a torch-side export: rename_graph_io(adapt_scorer(...), "image", "scores")."""
    copy = onnx.load_from_string(model if isinstance(model, bytes) else model.SerializeToString())
    weights = {t.name for t in copy.graph.initializer}
    source = next(v for v in copy.graph.input if v.name not in weights)
    for value, name in ((source, new_input), (copy.graph.output[0], new_output)):
        if value.name != name:
            free_name(copy.graph, name)  # renames `value` in place if it is the one holding `name`
            rename_value(copy.graph, value.name, name)
    onnx.checker.check_model(copy, full_check=True)
    return copy.SerializeToString()


def _session(data: bytes, where: str) -> ort.InferenceSession:
    try:
        return cpu_session(data)
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"{where} does not load in ONNX Runtime: {_first_line(exc)}") from exc


def _run(session: ort.InferenceSession, array: np.ndarray, shape: tuple, where: str) -> np.ndarray:
    """One run; the output must be finite and of `shape` (None: any size)."""
    try:
        result = session.run(None, {session.get_inputs()[0].name: array})[0]
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"{where} fails in ONNX Runtime on a batch of {len(array)} (is its batch axis dynamic "
                          f"inside the graph too?): {_first_line(exc)}") from exc
    if result.ndim != len(shape) or any(want not in (None, got) for got, want in zip(result.shape, shape)):
        raise ExportError(f"{where} gave an output of shape {list(result.shape)} on a batch of {len(array)}, "
                          f"expected {_shape(list(shape))} (None: any)")
    if not np.isfinite(result).all():
        raise ExportError(f"{where} gave non-finite values on a batch of {len(array)} seeded codes")
    return result


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _shape(dims: list) -> str:
    return "[" + ", ".join("B" if i == 0 and d is None else str(d) for i, d in enumerate(dims)) + "]"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
