"""editor: the deployable editor graph vs the test stage's own path (the bundle's mapping,
synthesis and scorer sessions on codes edited in NumPy), same codes, same thread count.

The editor is written for a small run of the built-in model made on the spot (or given),
then each path draws and scores the same edited faces at batch 1 and at batch 64: the
editor with stored groups, with groups found in the graph (-1: a second synthesis), and
its fp16 variant.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from compute.bundle import Bundle
from compute.editor import export_editor, load_editor, read_run
from compute.runs import CASES_FILE
from compute.sessions import make_session, run_single
from compute.tables import vector_matrix
from jobs.benchmark.timing import sustained_rate
from vectors.edits import case_directions, layer_codes


def bench_editor(bundle: Bundle, run: Path, out: Path, batch_sizes: list[int], seconds: float,
                 threads: int) -> dict[str, dict[int, float]]:
    edits = read_run(run, bundle)
    editor = load_editor(out) if (out / "manifest.json").is_file() else None
    if editor is None or editor.manifest["source_bundle"]["manifest_sha256"] != bundle.manifest_sha256:
        print(f"writing the editor of {run} to {out}", flush=True)
        export_editor(run, out, bundle, overwrite=True)
        editor = load_editor(out)
    method, cases = edits.method, pq.read_table(run / CASES_FILE)
    sessions = {s: make_session(bundle.graph_bytes(s), threads) for s in ("mapping", "synthesis", "scorer")}
    fp32, fp16 = editor.session(threads=threads), editor.session(fp16=True, threads=threads)
    rng = np.random.default_rng(0)
    rates: dict[str, dict[int, float]] = {}
    for size in batch_sizes:
        rows = rng.integers(0, cases.num_rows, size)
        codes = vector_matrix(cases[method.latent])[rows]
        stored = [cases["group"][int(i)].as_py() for i in rows]
        weights = rng.uniform(-1, 1, (size, len(method.properties))).astype(np.float32)
        given = np.array([method.group_names.index(g) for g in stored], np.int64)

        def test_stage():
            # The test stage's arithmetic (apply_edits) with one weight row per face.
            edited = codes + np.einsum("bp,bpd->bd", weights, case_directions(edits.matrices, stored))
            if method.layers is not None:
                edited = layer_codes(vector_matrix(cases["w"])[rows], edited[:, None], method.layers,
                                     bundle.num_ws)[:, 0]
            w = run_single(sessions["mapping"], edited) if method.latent == "z" else edited
            run_single(sessions["scorer"], run_single(sessions["synthesis"], w))

        paths = {"test stage (bundle graphs)": test_stage,
                 "editor, stored groups": lambda: editor.run(fp32, codes, weights, given),
                 "editor, groups found": lambda: editor.run(fp32, codes, weights, np.full(size, -1)),
                 "editor fp16, stored groups": lambda: editor.run(fp16, codes, weights, given)}
        for name, step in paths.items():
            rates.setdefault(name, {})[size] = sustained_rate(step, size, seconds)
    print(f"edit + draw + score, {bundle.manifest['model']} {bundle.resolution} px, space {method.space}, "
          f"{threads} threads, images/s:")
    print("  " + f"{'path':28s}" + "".join(f"{'batch ' + str(s):>12s}" for s in batch_sizes))
    for name, by_size in rates.items():
        print(f"  {name:28s}" + "".join(f"{by_size[s]:12.1f}" for s in batch_sizes))
    base = rates["test stage (bundle graphs)"]
    for name in list(rates)[1:]:
        print(f"  ratio {name} / test stage: " + ", ".join(f"{rates[name][s] / base[s]:.2f}x at {s}"
                                                         for s in batch_sizes))
    return rates
