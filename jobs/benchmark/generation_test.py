"""test: images/s of the generation test stage (Ray Data actors, batched) vs the
reference-style loop on the same model and directions: one edited image at a time, each
through a JPEG file, scorer batch 1 (timed on `reference_cases` cases), once with the
bundle's ONNX graphs and once in torch eager as the reference did. The directions are
fitted on `n` samples first (8,000 by default)."""
from __future__ import annotations

from pathlib import Path

from compute.fitting import fit_directions
from compute.generation import run_cases
from compute.resources import plan_resources
from compute.sampling import sample_table
from compute.seeding import CASES, draw_codes
from compute.sessions import make_session
from compute.testing import load_direction_set
from jobs.benchmark.reference_loop import onnx_engine, reference_loop, torch_engine
from jobs.benchmark.timing import images_per_second
from vectors.edits import apply_edits, case_directions
from vectors.groups import groups_of_matrix
from vectors.method import Method


def bench_test(bundle, n: int, cases: int, reference_cases: int, run: Path) -> dict[str, float]:
    import torch

    from export.synthetic import synthetic_spec

    method = Method()
    sample_table(bundle, n, 0, run, progress=False)
    direction_set, _, _ = load_direction_set(fit_directions(run, method, progress=False), bundle, method)
    weights = method.edit_weights()
    per_case = len(weights) + 1

    def stage(n):
        return lambda: run_cases(bundle, n, 0, [direction_set], method.group_by, weights, plan_resources(),
                                 progress=False)

    ours = images_per_second(stage(cases), cases * per_case, warm_up=stage(4))

    torch.set_num_threads(2)
    spec = synthetic_spec(bundle.resolution)
    sessions = {s: onnx_engine(make_session(bundle.graph_bytes(s), threads=2)) for s in ("mapping", "synthesis", "scorer")}
    engines = {"onnx runtime": sessions,
               "torch eager": {s: torch_engine(getattr(spec, s)) for s in ("mapping", "synthesis", "scorer")}}

    def reference_style(engine):
        def run_all():
            for case in range(reference_cases):
                w = engine["mapping"](draw_codes(0, [case], bundle.z_dim, CASES))
                base = reference_loop(engine["synthesis"], engine["scorer"], w, generator_batch=1, jpeg=True)
                group = groups_of_matrix(base, bundle.score_names, method.group_by, direction_set.medians)
                edits = apply_edits(w, case_directions(direction_set.matrices, group), weights)[0]
                reference_loop(engine["synthesis"], engine["scorer"], edits, generator_batch=1, jpeg=True)
        return run_all

    reference = {name: images_per_second(reference_style(engine), reference_cases * per_case, warm_up=lambda: None)
                 for name, engine in engines.items()}
    print(f"generation test, {bundle.manifest['model']} model {bundle.resolution} px, {per_case} images per case:")
    print(f"  Ray Data actors, batched ({cases} cases)  {ours:9.1f} images/s")
    for engine, rate in reference.items():
        print(f"  one image at a time + JPEG, {engine:12s}   {rate:9.1f} images/s   ratio {ours / rate:.1f}x")
    return {"ours": ours, **reference}
