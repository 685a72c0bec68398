"""torch -> ONNX model bundle: mapping.onnx, synthesis.onnx, scorer.onnx, manifest.json.

The bundle is the contract every downstream stage reads (see compute/bundle.py): graphs with
a dynamic batch axis and fixed input/output names, plus a manifest with dims, resolution,
ordered score names, default group medians, the exporter used and parity figures. A
synthesis that takes per-layer codes (W+) has input `ws` [B, num_ws, w_dim] and the
manifest says num_ws; one that takes a single code has input `w` [B, w_dim]. The
export is written to a temporary sibling directory and renamed into place at the end, so
an interrupted export never leaves a directory that looks like a bundle.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compute.bundle import external_data_tensors, write_directory
from compute.sessions import (
    images_per_call,
    make_session,
    run_single,
    synthesize,
    synthesize_and_score,
)
from vectors.names import NameRefused, check_score_names

OPSET = 17
FORMAT_VERSION = 1
# (file stem, input name, output name) of the three graphs every bundle has.
GRAPHS = (("mapping", "z", "w"), ("synthesis", "w", "image"), ("scorer", "image", "scores"))


class ExportError(RuntimeError):
    """The export could not produce a bundle that meets its contract."""


@dataclass
class ModelSpec:
    """Everything the exporter needs to know about one generator + scorer pair."""

    name: str
    mapping: nn.Module            # z [B, z_dim] -> w [B, w_dim]
    synthesis: nn.Module          # ws [B, num_ws, w_dim] (or w [B, w_dim]) -> image [B, 3, R, R] in [-1, 1]
    scorer: nn.Module | bytes     # image -> scores [B, len(score_names)]; bytes: a ready ONNX graph
    z_dim: int
    label_dim: int
    w_dim: int
    resolution: int
    score_names: list[str]
    group_medians: dict[str, float] | None   # None: measured on `median_samples` seeded codes at export
    source_sha256: str
    parity_tolerance: float
    parity_codes: int = 64        # random codes the torch vs ONNX Runtime check runs on
    median_samples: int = 256
    num_ws: int | None = None     # per-layer codes the synthesis takes; None: one w per image
    # For a scorer given as ONNX bytes: the torch computation it stands for (image -> scores),
    # if there is one, so that its scores get a parity figure too.
    scorer_reference: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Optional extra graphs, e.g. the synthetic world's ground truth: stem -> (module, in, out).
    extra_graphs: dict[str, tuple[nn.Module, str, str]] = field(default_factory=dict)
    extra_manifest: dict = field(default_factory=dict)


def checked_score_names(names, where: str = "--score-names") -> list[str]:
    """Score names as a bundle stores them (vectors.names.check_score_names), or ExportError."""
    try:
        return check_score_names(names, where, "name each scorer output once with a safe name (--score-names)")
    except NameRefused as exc:
        raise ExportError(str(exc)) from exc


def to_onnx_bytes(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str) -> bytes:
    """Export one module with a dynamic batch axis; returns the serialised model."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo, which needs the
        # extra onnxscript package; it still gives exact parity here, so keep it quiet.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # Without no_grad the trace keeps autograd state for every activation: a 1024-px
        # StyleGAN2 peaked at 6.3 GB instead of 1.8 GB, for byte-identical graphs.
        with torch.no_grad():
            torch.onnx.export(
                module.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                input_names=[input_name], output_names=[output_name],
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model, full_check=True)
    return buffer.getvalue()


def codes_example(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    """Zero codes of the shape the synthesis graph takes."""
    return torch.zeros(batch, spec.num_ws, spec.w_dim) if spec.num_ws else torch.zeros(batch, spec.w_dim)


def codes_input(spec: ModelSpec) -> str:
    return "ws" if spec.num_ws else "w"


def per_layer(spec: ModelSpec, w: torch.Tensor) -> torch.Tensor:
    """w [B, w_dim] as the synthesis takes it: given to every layer where it takes W+."""
    return w.unsqueeze(1).repeat(1, spec.num_ws, 1) if spec.num_ws else w


def export_graphs(spec: ModelSpec) -> dict[str, bytes]:
    """The three bundle graphs of `spec` (GRAPHS), serialised, without the parity check."""
    examples = {"mapping": torch.zeros(2, spec.z_dim), "synthesis": codes_example(spec),
                "scorer": torch.zeros(2, 3, spec.resolution, spec.resolution)}
    names = {"synthesis": (codes_input(spec), "image")}
    return {stem: spec.scorer if stem == "scorer" and isinstance(spec.scorer, bytes)
            else to_onnx_bytes(getattr(spec, stem), examples[stem], *names.get(stem, (i, o)))
            for stem, i, o in GRAPHS}


def measure_medians(graphs: dict[str, bytes], z_dim: int, score_names: list[str], samples: int,
                    seed: int = 0, progress: bool = True) -> dict[str, float]:
    """The median of every score over `samples` seeded codes z ~ N(0, 1), run through the
    bundle's graphs in ONNX Runtime: default group medians for a model that ships none.
    Calls are sized like the pipeline's (compute.sessions.images_per_call): at 1024 px and
    16 images per call this step alone held 16 GB."""
    sessions = {stem: cpu_session(graphs[stem]) for stem in ("mapping", "synthesis", "scorer")}
    batch = images_per_call(sessions["synthesis"])
    rng = np.random.default_rng(seed)
    scores, started, shown = [], time.perf_counter(), time.perf_counter()
    for done in range(0, samples, batch):
        z = rng.standard_normal((min(batch, samples - done), z_dim)).astype(np.float32)
        w = run_single(sessions["mapping"], z)
        scores.append(synthesize_and_score(sessions["synthesis"], sessions["scorer"], w))
        if progress and time.perf_counter() - shown > 15:  # large generators take minutes here
            shown = time.perf_counter()
            print(f"  {done + len(z)}/{samples} samples, {shown - started:.0f}s", flush=True)
    scores = np.concatenate(scores)
    if not np.isfinite(scores).all():
        raise ExportError("the scorer gave non-finite scores on seeded samples; check the graphs")
    return {name: round(float(np.median(scores[:, i])), 6) for i, name in enumerate(score_names)}


def cpu_session(model_bytes: bytes) -> ort.InferenceSession:
    """A quiet CPU session on every core for export-time checks; made like the pipeline's
    (compute.sessions), so a generator's session knows its widest activation."""
    return make_session(model_bytes, threads=os.cpu_count() or 1)


def _parity(spec: ModelSpec, graphs: dict[str, bytes], codes: int, seed: int) -> dict:
    """Torch vs ONNX Runtime, stage by stage, on `codes` random codes: the max abs difference
    per stage, and under "relative" the same divided by the torch output's largest magnitude.

    A scorer given as an ONNX graph has no torch side: its scores are not compared (None).
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(codes, spec.z_dim, generator=generator)
    # Both sides draw as many images at once as the pipeline would (a 1024-px generator: one).
    synthesis = cpu_session(graphs["synthesis"])
    chunk = images_per_call(synthesis)
    with torch.no_grad():
        w = spec.mapping(z)
        image = torch.cat([spec.synthesis(per_layer(spec, w[i:i + chunk])) for i in range(0, codes, chunk)])
        scorer = spec.scorer_reference if isinstance(spec.scorer, bytes) else spec.scorer
        scores = None if scorer is None else scorer(image).numpy()
    ort = {"w": run_single(cpu_session(graphs["mapping"]), z.numpy()),
           "image": synthesize(synthesis, per_layer(spec, w).numpy()),
           "scores": run_single(cpu_session(graphs["scorer"]), image.numpy())}
    if ort["scores"].ndim != 2 or ort["scores"].shape[1] != len(spec.score_names):
        raise ExportError(f"the scorer outputs shape {list(ort['scores'].shape)} but {len(spec.score_names)} "
                          f"score names are given ({', '.join(spec.score_names)}); name each output column once")
    ours = {"w": w.numpy(), "image": image.numpy(), "scores": scores}
    result, relative = {"codes": codes}, {}
    for stage, expected in ours.items():
        if expected is None:
            result[stage] = relative[stage] = None
            continue
        if not np.isfinite(ort[stage]).all():
            raise ExportError(f"ONNX Runtime gave non-finite {stage} values on random codes")
        result[stage] = float(np.abs(ort[stage] - expected).max())
        relative[stage] = result[stage] / max(float(np.abs(expected).max()), 1e-12)
    return dict(result, relative=relative)


def export_bundle(spec: ModelSpec, out: Path, overwrite: bool = False, seed: int = 0) -> dict:
    """Export `spec` to the bundle directory `out`; returns the manifest."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    checked_score_names(spec.score_names, f"the {spec.name} model's score names")
    out.parent.mkdir(parents=True, exist_ok=True)

    graphs = export_graphs(spec)
    parity = _parity(spec, graphs, spec.parity_codes, seed)
    worst = max(v for v in parity["relative"].values() if v is not None)
    if worst > spec.parity_tolerance:
        raise ExportError(f"ONNX Runtime differs from torch by {worst:.3g} relative "
                          f"(> {spec.parity_tolerance:g}): {parity}")

    medians, medians_source = spec.group_medians, "the model's own"
    if medians is None:
        print(f"measuring default group medians on {spec.median_samples} seeded samples", flush=True)
        medians = measure_medians(graphs, spec.z_dim, spec.score_names, spec.median_samples, seed)
        medians_source = f"median of {spec.median_samples} seeded samples (seed {seed})"
    extra = {stem: (to_onnx_bytes(m, codes_example(spec), i, o), i, o)
             for stem, (m, i, o) in spec.extra_graphs.items()}
    files = {stem: {"file": f"{stem}.onnx", "input": i, "output": o} for stem, i, o in GRAPHS}
    files["synthesis"]["input"] = codes_input(spec)
    files.update({stem: {"file": f"{stem}.onnx", "input": i, "output": o}
                  for stem, (_, i, o) in extra.items()})
    payload = dict(graphs, **{stem: b for stem, (b, _, _) in extra.items()})
    for stem, data in payload.items():
        files[stem]["sha256"] = hashlib.sha256(data).hexdigest()

    manifest = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "source_sha256": spec.source_sha256,
        "z_dim": spec.z_dim,
        "label_dim": spec.label_dim,
        "w_dim": spec.w_dim,
        "resolution": spec.resolution,
        **({"num_ws": spec.num_ws} if spec.num_ws else {}),
        "score_names": list(spec.score_names),
        "group_medians": medians,
        "group_medians_source": medians_source,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}, onnx {onnx.__version__}",
        "parity": dict(parity, tolerance=spec.parity_tolerance),
        "files": files,
        **spec.extra_manifest,
    }

    write_bundle(out, payload, manifest, overwrite=overwrite)
    return manifest


def write_bundle(out: Path, payload: dict[str, bytes], manifest: dict, overwrite: bool = False) -> None:
    """Write graphs (manifest["files"][stem]["file"] <- payload[stem]) and the manifest to `out`,
    atomically (compute.bundle.write_directory).

    What load_bundle refuses is refused here too, before anything is written: unsafe,
    repeated or column-clashing score names, and graphs that keep tensors in external data
    files (a bundle's graphs are self-contained, so its hashes cover every weight)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    checked_score_names(manifest["score_names"], "the bundle's score names")
    for stem, data in payload.items():
        external = external_data_tensors(onnx.load_from_string(data))
        if external:
            raise ExportError(f"the {stem} graph keeps tensor {external[0][0]!r} in an external data file "
                              f"({external[0][1]!r}); a bundle stores self-contained graphs: load the data into "
                              f"the graph (onnx.load with its external data) before exporting")
    write_directory(out, {manifest["files"][stem]["file"]: data for stem, data in payload.items()}, manifest)
