"""The editor of a tested run: build it (compute/editor_graph.py), check it against the test
stage, write it as a directory, and open it again.

`export_editor` writes editor.onnx, editor_fp16.onnx (fp16 inside, fp32 inputs and outputs)
and manifest.json, after checking the editor's images against the test stage's own edit
code on some of the run's cases and weights.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compute.bundle import Bundle, cache_root, checked_graph, load_bundle, write_directory
from compute.editor_graph import EditorError, build_editor
from compute.runs import CASES_FILE, recorded_path
from compute.sessions import images_per_call, make_session, run_single, synthesize
from compute.storage import Place, as_place
from compute.tables import read_metadata, read_table, vector_matrix
from compute.vectors_table import read_vectors
from vectors.edits import apply_edits, case_directions, direction_matrices, layer_codes
from vectors.method import Method

EDITOR_FORMAT, EDITOR_VERSION = "vectorfind-editor", 1
EDITOR_FILE, EDITOR_FP16_FILE, MANIFEST_FILE = "editor.onnx", "editor_fp16.onnx", "manifest.json"
OUTPUTS = ("image", "scores", "group_used")
PARITY_CASES, PARITY_TOLERANCE = 8, 1e-4
@dataclass(frozen=True)
class RunEdits:
    """What an editor bakes in from a run: its method, directions, medians and test cases."""

    run: Place
    bundle: Bundle
    method: Method
    matrices: dict[str, np.ndarray]   # {group: (P, D)}
    medians: dict[str, float]
    test: dict


def read_run(run: Place | Path, bundle: Bundle | None = None) -> RunEdits:
    """The run's tested directions; refuses a run without test results or of another bundle.
    bundle None: the built-in bundle whose manifest hash the run recorded."""
    run = as_place(run)
    cases_file = run / CASES_FILE
    if not cases_file.is_file():
        raise EditorError(f"{run} has no {CASES_FILE}: an editor needs a tested run (python -m jobs.vectorfind "
                          f"or jobs.test)")
    try:
        test = read_metadata(cases_file).get("test")
    except Exception as exc:  # truncated or foreign files: pyarrow and json raise several types
        raise EditorError(f"{cases_file} is damaged ({str(exc).splitlines()[0]}); run the test again") from exc
    if not test or "method" not in test or "vectors" not in test:
        raise EditorError(f"{cases_file} records no test settings; run the generation test again (python -m jobs.test)")
    recorded = test.get("bundle_manifest_sha256")
    bundle = find_bundle(str(recorded)) if bundle is None else bundle
    if recorded != bundle.manifest_sha256:
        raise EditorError(f"{run} was tested on the bundle with manifest sha256 {str(recorded)[:16]}, not "
                          f"{bundle.path} ({bundle.manifest_sha256[:16]}); pass the run's own bundle (--bundle DIR)")
    method = Method.from_dict(test["method"])
    method.check_scores(bundle.score_names)
    method.check_layers(bundle.num_ws)
    vectors_path = recorded_path(test["vectors"], run)
    if not vectors_path.is_file():
        raise EditorError(f"the vectors {run} was tested with are gone ({vectors_path}); fit and test again")
    if vectors_path.sha256() != test.get("vectors_sha256"):
        raise EditorError(f"{vectors_path} changed after the test (sha256 differs); test the run again "
                          f"(python -m jobs.test) so the editor matches its results")
    _, directions, _ = read_vectors(vectors_path)
    matrices = direction_matrices(directions, method.property_names)
    if sorted(matrices) != sorted(method.group_names):
        raise EditorError(f"{vectors_path} has groups {', '.join(sorted(matrices))}, the method "
                          f"{', '.join(method.group_names)}")
    medians = {g: float(test["median_values"][g]) for g in method.group_by}
    return RunEdits(run, bundle, method, matrices, medians, test)


def find_bundle(sha256: str) -> Bundle:
    """The cached built-in bundle whose manifest hash is `sha256` (runs record only the hash)."""
    for manifest in sorted((cache_root() / "bundles").glob("*/manifest.json")):
        if hashlib.sha256(manifest.read_bytes()).hexdigest() == sha256:
            return load_bundle(manifest.parent)
    raise EditorError(f"the run's model bundle (manifest sha256 {sha256[:16]}) is not among the built-in bundles "
                      f"in {cache_root() / 'bundles'}; pass it with --bundle DIR")


# ---- parity with the test stage and the bundle directory ---------------------------


def _parity_rows(edits: RunEdits, cases) -> tuple[np.ndarray, np.ndarray]:
    """Up to PARITY_CASES case rows (one per group first, then the lowest ids) and a few of
    the test's own edit weights (first, last and two between)."""
    groups = cases["group"].to_pylist()
    first = {g: i for i, g in reversed(list(enumerate(groups)))}
    rows = sorted(first.values())[:PARITY_CASES]
    rows = sorted(rows + [i for i in range(len(groups)) if i not in rows][:PARITY_CASES - len(rows)])
    weights = edits.method.edit_weights()
    picks = sorted({0, len(weights) // 3, (2 * len(weights)) // 3, len(weights) - 1})
    return np.array(rows), weights[picks]


def _run_editor(session, codes: np.ndarray, weights: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    """The editor's outputs, in calls as large as the pipeline's synthesis calls (images_per_call)."""
    step = images_per_call(session)
    parts = [session.run(list(OUTPUTS), {"code": codes[lo:lo + step].astype(np.float32),
                                         "weights": weights[lo:lo + step].astype(np.float32),
                                         "group": groups[lo:lo + step].astype(np.int64)})
             for lo in range(0, max(len(codes), 1), step)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


def _fp16_parity(editor: bytes, editor_fp16: bytes, codes, weights, groups, per_case: int) -> dict:
    """How far editor_fp16.onnx moves the editor's outputs on a GPU. It must run, but on a CPU
    ONNX Runtime computes its ops in float32 and skips roundings a GPU makes, so the figures
    come from the fp16 emulation (compute.fp16_check), which rounds wherever a GPU stores
    fp16, in the If branch too; both sides run as written, so they are fp16's alone."""
    from compute.fp16_check import emulated_session, fp16_emulation

    cpu_run = _run_editor(make_session(editor_fp16, threads=2), codes, weights, groups)
    if not all(np.isfinite(out).all() for out in cpu_run[:2]):
        raise EditorError("editor parity failed: the fp16 editor's images or scores are not finite")
    image, scores, used = _run_editor(emulated_session(editor), codes, weights, groups)
    image16, scores16, used16 = _run_editor(emulated_session(fp16_emulation(editor)), codes, weights, groups)
    return {"fp16_image_max_abs_diff": float(np.abs(image16 - image).max()),
            "fp16_scores_max_abs_diff": float(np.abs(scores16 - scores).max()),
            "fp16_groups_equal": int((used16 == used).sum() // per_case)}


def check_parity(bundle: Bundle, edits: RunEdits, editor: bytes, editor_fp16: bytes) -> dict:
    """Editor images vs the test stage's edit code (apply_edits, layer_codes, run_single
    through the bundle's graphs) on some of the run's cases; groups found vs stored."""
    method, cases = edits.method, read_table(edits.run / CASES_FILE)
    rows, weights = _parity_rows(edits, cases)
    stored = [cases["group"][int(i)].as_py() for i in rows]
    latents = vector_matrix(cases[method.latent])[rows]
    edited = apply_edits(latents, case_directions(edits.matrices, stored), weights)          # (B, E, D)
    if method.layers is not None:
        edited = layer_codes(vector_matrix(cases["w"])[rows], edited, method.layers, bundle.num_ws)
    edited = edited.reshape(-1, *edited.shape[2:])
    mapping, synthesis, scorer = (make_session(bundle.graph_bytes(s), threads=2) for s in ("mapping", "synthesis", "scorer"))
    want = synthesize(synthesis, run_single(mapping, edited) if method.latent == "z" else edited)
    want_scores = run_single(scorer, want)

    codes, tiled = np.repeat(latents, len(weights), axis=0), np.tile(weights, (len(rows), 1))
    unset = np.full(len(codes), -1, np.int64)
    image, scores, used = _run_editor(make_session(editor, threads=2), codes, tiled, unset)
    found = [method.group_names[i] for i in used.reshape(len(rows), -1)[:, 0]]
    given = np.repeat([method.group_names.index(g) for g in stored], len(weights))
    image_given, _, _ = _run_editor(make_session(editor, threads=2), codes, tiled, given)
    parity = {"case_ids": cases["case_id"].to_numpy()[rows].tolist(),
              "weights": [[float(str(v)) for v in row] for row in weights],  # float32 as written
              "images": len(codes), "tolerance": PARITY_TOLERANCE,
              "image_max_abs_diff": float(np.abs(image - want).max()),
              "image_max_abs_diff_given_groups": float(np.abs(image_given - want).max()),
              "scores_max_abs_diff": float(np.abs(scores - want_scores).max()),
              "groups_found": found, "groups_stored": stored,
              "groups_equal": int(sum(f == s for f, s in zip(found, stored))),
              **_fp16_parity(editor, editor_fp16, codes, tiled, unset, len(weights))}
    worst = max(parity["image_max_abs_diff"], parity["image_max_abs_diff_given_groups"])
    if not worst <= PARITY_TOLERANCE or found != stored:
        raise EditorError(f"editor parity failed: images differ from the test stage's by up to {worst:.2e} "
                          f"(tolerance {PARITY_TOLERANCE:g}), groups found {found} vs stored {stored}")
    return parity


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_editor(run: Place | Path, out: Path, bundle=None, overwrite: bool = False) -> dict:
    """Write the editor of RUN to the directory `out`; returns its manifest.

    bundle: a Bundle or bundle directory; None looks for the run's among the built-in ones."""
    run, out = as_place(run), Path(out)
    if not run.is_dir():
        raise EditorError(f"no run directory {run}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise EditorError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    edits = read_run(run, bundle if bundle is None or isinstance(bundle, Bundle) else load_bundle(bundle))
    bundle = edits.bundle
    local_sources = [] if run.remote else [(Path(run.key()), "the run")]
    for source, what in [*local_sources, (Path(bundle.path).resolve(), "the model bundle")]:
        if out.resolve() in [source, *source.parents]:
            raise EditorError(f"--out {out} would replace {what} ({source}) itself; choose another directory")
    from compute.fp16 import to_fp16

    method = edits.method
    editor = build_editor(bundle, method, edits.matrices, edits.medians).SerializeToString()
    editor_fp16 = to_fp16(editor)
    parity = check_parity(bundle, edits, editor, editor_fp16)
    manifest = {
        "format": EDITOR_FORMAT, "version": EDITOR_VERSION,
        "inputs": {"code": f"[B, {bundle.z_dim if method.latent == 'z' else bundle.w_dim}] float32, the face's "
                           f"{method.latent}", "weights": f"[B, {len(method.properties)}] float32, one per property",
                   "group": "[B] int64, index into groups; -1: found from the base image"},
        "outputs": {"image": f"[B, 3, {bundle.resolution}, {bundle.resolution}] float32 in [-1, 1]",
                    "scores": f"[B, {len(bundle.score_names)}] float32", "group_used": "[B] int64"},
        "properties": [{"name": p.name, "min": min(p.schedule), "max": max(p.schedule), "schedule": list(p.schedule)}
                       for p in method.properties],
        "groups": list(method.group_names), "group_by": list(method.group_by), "group_medians": edits.medians,
        "space": method.space, "latent": method.latent, "layers": list(method.layers) if method.layers else None,
        "code_dim": bundle.z_dim if method.latent == "z" else bundle.w_dim,
        "z_dim": bundle.z_dim, "w_dim": bundle.w_dim, "num_ws": bundle.num_ws, "resolution": bundle.resolution,
        "score_names": bundle.score_names,
        "source_run": run.key(), "cases_file": (run / CASES_FILE).key(),
        "vectors_sha256": edits.test["vectors_sha256"], "method": method.to_dict(),
        "source_bundle": {"manifest_sha256": bundle.manifest_sha256, "model": bundle.manifest.get("model"),
                          "path": str(Path(bundle.path).resolve())},
        "files": {"editor": {"file": EDITOR_FILE, "sha256": _sha256(editor)},
                  "editor_fp16": {"file": EDITOR_FP16_FILE, "sha256": _sha256(editor_fp16),
                                  "note": "fp16 inside, fp32 inputs and outputs"}},
        "parity": parity,
    }
    write_directory(out, {EDITOR_FILE: editor, EDITOR_FP16_FILE: editor_fp16}, manifest)
    return manifest


@dataclass(frozen=True)
class Editor:
    path: Path
    manifest: dict

    @property
    def property_names(self) -> list[str]:
        return [p["name"] for p in self.manifest["properties"]]

    @property
    def groups(self) -> list[str]:
        return list(self.manifest["groups"])

    def session(self, fp16: bool = False, threads: int = 2):
        stem = "editor_fp16" if fp16 else "editor"  # read through the same checks as load_editor
        return make_session(checked_graph(self.path, stem, self.manifest["files"][stem], self.path / MANIFEST_FILE)[1],
                            threads)

    def run(self, session, codes: np.ndarray, weights: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
        """image, scores, group_used for codes (B, D), weights (B, P), group indices (B,) (-1: find)."""
        return _run_editor(session, codes, weights, groups)


def load_editor(path) -> Editor:
    """Open an editor directory written by export_editor, checking its manifest and file hashes."""
    path = Path(path)
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        raise EditorError(f"{path} is not an editor: no {MANIFEST_FILE} (write one with python -m jobs.export --editor RUN)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditorError(f"{manifest_file} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EDITOR_FORMAT:
        raise EditorError(f"{path} is not an editor directory ({manifest_file} has format "
                          f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, not {EDITOR_FORMAT!r}); "
                          f"pass the directory python -m jobs.export --editor wrote")
    if manifest.get("version") != EDITOR_VERSION:
        raise EditorError(f"{path} is editor version {manifest.get('version')!r}; this vectorfind reads version "
                          f"{EDITOR_VERSION}: export it again")
    for stem, entry in manifest.get("files", {}).items():  # in the directory, hashed, no external data
        checked_graph(path, stem, entry, manifest_file)
    return Editor(path, manifest)
