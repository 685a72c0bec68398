"""Benchmarks that print figures measured side by side in one run.

    python -m jobs.benchmark export [--batch-size 64] [--seconds 5] [--threads 2]
    python -m jobs.benchmark sampling [--n 20000] [--reference-n 1600]
    python -m jobs.benchmark fit [--n 80000] [--run DIR]
    python -m jobs.benchmark test [--cases 200] [--reference-cases 20]
    python -m jobs.benchmark grid [--n 4000,10000] [--ratio 0.1,0.2,0.3] [--cases 50]
    python -m jobs.benchmark reference [--images 32] [--batch-sizes 1,4,16] [--threads 2] [--gpu] [--fp16]

export:   images/s of synthesis + scoring of the built-in synthetic model at its default
          resolution, torch eager vs ONNX Runtime, same codes, same thread count.
sampling: images/s of sampling (code -> w -> image -> scores) on the same bundle:
          (a) the Ray Data pipeline, (b) one process looping over batched ONNX Runtime
          calls, (c) a reference-style loop (torch eager, generator batch 4, scorer batch
          1, per-image numpy conversions; timed on --reference-n images), and a/b, a/c.
fit:      wall time and mean validation accuracy of the 24 fits (w, ratio 0.2) for (a)
          parallel Ray tasks with the default solver, (b) the reference set-up (LinearSVC,
          C=1, unscaled) sequentially in one process, and each alternative solver as
          parallel Ray tasks; samples come from --run, sampled there first if absent.
test:     images/s of the generation test stage (Ray Data actors, batched) vs
          reference-style loops on the same model (one image at a time, each written to a
          JPEG file and read back, scorer batch 1; timed on --reference-cases cases), run
          once with the bundle's ONNX graphs and once in torch eager as the reference did.
grid:     wall time of one grid job vs running jobs.vectorfind once per cell, same
          cells, cases and Ray instance (so Ray's start-up is paid once by both).
reference: images/s of synthesis + scoring of the reference architecture (genforce
          StyleGAN 256 px + Property Score CNN, random weights in the reference's key
          layout): the reference's style (torch eager, generator batch 4, scorer batch 1,
          per-image numpy conversions), torch eager batched, and ONNX Runtime batched with
          IO binding (images stay on the device between synthesis and scoring) over a
          batch-size sweep. --gpu runs ONNX Runtime on CUDA and torch on the GPU; --fp16
          adds fp16 graphs (fp32 inputs and outputs) and their difference from fp32.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from jobs.cli import UsageError, parser, run_main


def _rate(step, batch_size: int, seconds: float) -> float:
    """Images/s of `step()` (one batch), after a warm-up call, over at least `seconds`."""
    step()
    started, batches = time.perf_counter(), 0
    while True:
        step()
        batches += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and batches >= 3:
            return batches * batch_size / elapsed


def bench_export(batch_size: int, seconds: float, threads: int) -> dict[str, float]:
    import torch

    from export.scorer import WEIGHTS
    from export.synthetic import synthetic_spec
    from export.onnx_bundle import export_graphs

    torch.set_num_threads(threads)
    spec = synthetic_spec()
    z = torch.from_numpy(draw_codes(0, np.arange(batch_size), spec.z_dim))
    with torch.no_grad():
        w = spec.mapping(z)
    sessions = {stem: make_session(graph, threads) for stem, graph in export_graphs(spec).items()}
    w_np = w.numpy()

    def torch_step():
        with torch.no_grad():
            spec.scorer(spec.synthesis(w))

    def ort_step():
        run_single(sessions["scorer"], run_single(sessions["synthesis"], w_np))

    rates = {"torch eager": _rate(torch_step, batch_size, seconds),
             "onnx runtime": _rate(ort_step, batch_size, seconds)}
    print(f"synthesis + scoring, synthetic model {spec.resolution} px, batch {batch_size}, "
          f"{threads} threads (weights {WEIGHTS.name}):")
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:9.1f} images/s")
    print(f"  ratio onnx runtime / torch eager: {rates['onnx runtime'] / rates['torch eager']:.2f}x")
    return rates


def bench_sampling(n: int, reference_n: int, batch_size: int = 512) -> dict[str, float]:
    import torch

    from compute.sampling import plan_resources, sample_table
    from export.synthetic import synthetic_spec
    from jobs.bundles import resolve_bundle
    from jobs.raycluster import init_ray

    bundle = resolve_bundle(None)
    rates = {}

    # (b) one process, batched ONNX Runtime calls on all cores.
    sessions = [make_session(bundle.graph_bytes(s), threads=2) for s in ("mapping", "synthesis", "scorer")]
    started = time.perf_counter()
    for lo in range(0, n, batch_size):
        z = draw_codes(0, np.arange(lo, min(n, lo + batch_size)), bundle.z_dim)
        run_single(sessions[2], run_single(sessions[1], run_single(sessions[0], z)))
    rates["b"] = n / (time.perf_counter() - started)

    # (c) the reference's style: torch eager, generator batch 4, scorer batch 1, images
    # converted to numpy and back one at a time.
    torch.set_num_threads(2)
    spec = synthetic_spec(bundle.resolution)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(0, reference_n, 4):
            z = torch.tensor(rng.standard_normal((4, bundle.z_dim)), dtype=torch.float32)
            images = spec.synthesis(spec.mapping(z))
            for image in images:
                pixels = ((image.numpy().transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
                back = torch.tensor(pixels.transpose(2, 0, 1) / 127.5 - 1, dtype=torch.float32)
                spec.scorer(back.unsqueeze(0)).numpy()
    rates["c"] = reference_n / (time.perf_counter() - started)

    # (a) the Ray Data pipeline with default resources. Ray's start-up and its first
    # pipeline's one-time costs are not timed (a short warm-up run pays them); the timed
    # run still starts its own actors and sessions.
    init_ray()
    sample_table(bundle, min(n, 1000), 1, None, resources=plan_resources(), progress=False)
    started = time.perf_counter()
    sample_table(bundle, n, 0, None, resources=plan_resources(), progress=False)  # the jobs' default batch size
    rates["a"] = n / (time.perf_counter() - started)

    print(f"sampling, synthetic model {bundle.resolution} px, n = {n:,} (reference loop: {reference_n:,}):")
    print(f"  (a) Ray Data pipeline           {rates['a']:9.1f} images/s")
    print(f"  (b) single-process batched ORT  {rates['b']:9.1f} images/s")
    print(f"  (c) reference-style torch loop  {rates['c']:9.1f} images/s")
    print(f"  a/b = {rates['a'] / rates['b']:.2f}   a/c = {rates['a'] / rates['c']:.1f}")
    return rates


def bench_fit(n: int, run) -> dict[str, tuple[float, float]]:
    from pathlib import Path

    from compute.sampling import sample_table
    from jobs.bundles import resolve_bundle
    from jobs.fit import fit_all, load_samples
    from jobs.raycluster import init_ray
    from vectors.groups import GROUP_NAMES, PROPERTIES, assign_groups, select
    from vectors.svm import SvmConfig, fit_selection

    init_ray()
    run = Path(run or f"runs/benchmark-fit-{n}")
    if not (run / "samples.parquet").is_file():
        sample_table(resolve_bundle(None), n, 0, run)
    latents, scores, sampling, _ = load_samples(run, "w")
    if len(latents) != n:
        raise UsageError(f"{run} holds {len(latents):,} samples, not --n {n:,}; pass another --run")
    groups = assign_groups(scores, sampling["group_medians"])
    ratio, seed = 0.2, 0

    def parallel(cfg):
        rows = fit_all(latents, scores, groups, ratio, seed, cfg, "w", progress=False)
        return float(np.mean([r["val_accuracy"] for r in rows]))

    def sequential(cfg):
        accs = [fit_selection(latents, select(scores, groups, g, p, ratio, seed), cfg).val_accuracy
                for g in GROUP_NAMES for p in PROPERTIES]
        return float(np.mean(accs))

    cases = [("(a) Ray tasks, LinearSVC C=1 unscaled (default)", parallel, SvmConfig()),
             ("(b) one process, LinearSVC C=1 unscaled (reference)", sequential, SvmConfig()),
             ("(c) Ray tasks, LinearSVC scaled inputs", parallel, SvmConfig(scale=True)),
             ("(c) Ray tasks, LinearSVC dual", parallel, SvmConfig(dual="true")),
             ("(c) Ray tasks, LinearSVC primal", parallel, SvmConfig(dual="false")),
             ("(c) Ray tasks, SVC(kernel='linear') C=1", parallel, SvmConfig(solver="svc", max_iter=100000)),
             ("(c) Ray tasks, SVC(kernel='linear') C=0.001", parallel, SvmConfig(solver="svc", C=0.001, max_iter=100000))]
    parallel(SvmConfig())  # warm-up: workers import scikit-learn once, untimed
    results = {}
    for name, how, cfg in cases:
        started = time.perf_counter()
        accuracy = how(cfg)
        results[name] = (time.perf_counter() - started, accuracy)
    print(f"24 fits (8 groups x eyes/mouth/pose), w, ratio 0.2, n = {n:,}:")
    for name, (seconds, accuracy) in results.items():
        print(f"  {name:52s} {seconds:7.2f} s   mean val acc {accuracy:.4f}")
    a, b = results[cases[0][0]], results[cases[1][0]]
    print(f"  a/b speed-up = {b[0] / a[0]:.2f}x, accuracy a - b = {a[1] - b[1]:+.4f}")
    return results


def bench_test(cases: int, reference_cases: int) -> dict[str, float]:
    import tempfile
    from pathlib import Path

    from PIL import Image

    from compute.generation import Schedule, direction_matrices, run_cases
    from compute.sampling import plan_resources, sample_table
    from compute.seeding import CASES
    from compute.vectors_table import read_vectors
    from jobs.bundles import resolve_bundle
    from jobs.fit import run_fit
    from jobs.raycluster import init_ray

    init_ray()
    bundle = resolve_bundle(None)
    run = Path("runs/benchmark-test")
    sample_table(bundle, 8000, 0, run, progress=False)
    _, directions, meta = read_vectors(run_fit(run, progress=False))
    matrices = direction_matrices(directions)
    medians = meta["fit"]["medians"]
    schedule = Schedule()
    weights = schedule.weights()
    images_per_case = len(weights) + 1

    # Warm-up (untimed), then the test stage as jobs.test runs it.
    run_cases(bundle, 4, 1, "w", [matrices], medians, schedule, plan_resources(), progress=False)
    started = time.perf_counter()
    run_cases(bundle, cases, 0, "w", [matrices], medians, schedule, plan_resources(), progress=False)
    ours = cases * images_per_case / (time.perf_counter() - started)

    sessions = {s: make_session(bundle.graph_bytes(s), threads=2) for s in ("mapping", "synthesis", "scorer")}
    names = bundle.score_names
    cols = [names.index(g) for g in ("hair_color", "hair_length", "background_mean")]
    med = np.array([medians[g] for g in ("hair_color", "hair_length", "background_mean")])

    def through_jpeg(image, path):
        pixels = ((image.transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=95)
        back = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        return (back.transpose(2, 0, 1) / 127.5 - 1)[None]

    import torch

    from export.synthetic import synthetic_spec

    torch.set_num_threads(2)
    spec = synthetic_spec(bundle.resolution)

    def torch_run(module):
        def call(x):
            with torch.no_grad():
                return module(torch.from_numpy(x)).numpy()
        return call

    engines = {"onnx runtime": {s: (lambda x, s=s: run_single(sessions[s], x)) for s in sessions},
               "torch eager": {"mapping": torch_run(spec.mapping), "synthesis": torch_run(spec.synthesis),
                               "scorer": torch_run(spec.scorer)}}
    reference = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine, run in engines.items():
            started = time.perf_counter()
            for case in range(reference_cases):
                z = draw_codes(0, [case], bundle.z_dim, CASES)
                w = run["mapping"](z)
                base = run["scorer"](through_jpeg(run["synthesis"](w)[0], f"{tmp}/base.jpg"))
                group = "".join("h" if v >= m else "l" for v, m in zip(base[0, cols], med))
                for i, row in enumerate(weights):
                    image = run["synthesis"]((w + row @ matrices[group]).astype(np.float32))[0]
                    run["scorer"](through_jpeg(image, f"{tmp}/{case}_{i}.jpg"))
            reference[engine] = reference_cases * images_per_case / (time.perf_counter() - started)

    print(f"generation test, synthetic model {bundle.resolution} px, {images_per_case} images per case:")
    print(f"  Ray Data actors, batched ({cases} cases)  {ours:9.1f} images/s")
    for engine, rate in reference.items():
        print(f"  one image at a time + JPEG, {engine:12s}   {rate:9.1f} images/s   ratio {ours / rate:.1f}x")
    return {"ours": ours, **reference}


def bench_grid(ns: str, ratios: str, cases: int) -> dict[str, float]:
    import contextlib
    import io
    import shutil
    import tempfile

    from jobs import grid, vectorfind
    from jobs.bundles import resolve_bundle
    from jobs.raycluster import init_ray

    resolve_bundle(None)  # export once, untimed
    init_ray()
    common = ["--cases", str(cases), "--seed", "0"]
    cells = [(n, r) for n in ns.split(",") for r in ratios.split(",")]
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        quiet = contextlib.redirect_stdout(io.StringIO())
        started = time.perf_counter()
        with quiet:
            grid.main(["--out", f"{tmp}/grid", "--n", ns, "--ratio", ratios, *common])
        one_job = time.perf_counter() - started
        started = time.perf_counter()
        for n, r in cells:
            with contextlib.redirect_stdout(io.StringIO()):
                vectorfind.main(["--out", f"{tmp}/cell-{n}-{r}", "--n", n, "--ratio", r, *common])
        per_cell = time.perf_counter() - started
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"grid of {len(cells)} cells (n {ns}; ratio {ratios}; {cases} cases each):")
    print(f"  one jobs.grid run                   {one_job:7.1f} s")
    print(f"  jobs.vectorfind once per cell       {per_cell:7.1f} s")
    print(f"  speed-up: {per_cell / one_job:.1f}x")
    return {"grid": one_job, "per_cell": per_cell}


def bench_reference(images: int, batch_sizes: list[int], threads: int, gpu: bool, fp16: bool) -> dict[str, float]:
    import tempfile

    import torch

    from compute.sessions import score_images
    from export.ohlora import ohlora_spec, write_random_checkpoints
    from export.onnx_bundle import export_graphs

    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpu else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        spec = ohlora_spec(*write_random_checkpoints(Path(tmp), seed=0))
    graphs = export_graphs(spec)
    sessions = {stem: make_session(graph, threads, gpu) for stem, graph in graphs.items()}
    if fp16:
        from export.fp16 import to_fp16

        half = {stem: make_session(to_fp16(graphs[stem]), threads, gpu) for stem in ("synthesis", "scorer")}
    mapping, synthesis, scorer = (m.to(device) for m in (spec.mapping, spec.synthesis, spec.scorer))
    codes = draw_codes(0, np.arange(images), spec.z_dim)
    rates = {}

    def timed(name, run):
        run(codes[:min(4, images)])  # warm-up: allocations, kernel selection
        started = time.perf_counter()
        run(codes)
        rates[name] = images / (time.perf_counter() - started)
        print(f"  {name:40s} {rates[name]:8.2f} images/s", flush=True)

    @torch.no_grad()
    def reference_style(z):
        for lo in range(0, len(z), 4):
            batch = mapping(torch.from_numpy(z[lo:lo + 4]).to(device))
            for image in synthesis(batch):
                pixels = ((image.cpu().numpy().transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
                back = torch.tensor(pixels.transpose(2, 0, 1) / 127.5 - 1, dtype=torch.float32, device=device)
                scorer(back.unsqueeze(0)).cpu().numpy()

    def torch_batched(size):
        @torch.no_grad()
        def run(z):
            for lo in range(0, len(z), size):
                scorer(synthesis(mapping(torch.from_numpy(z[lo:lo + size]).to(device)))).cpu().numpy()
        return run

    def ort_batched(size, graphs):
        def run(z):
            for lo in range(0, len(z), size):
                w = run_single(sessions["mapping"], z[lo:lo + size])
                score_images(graphs["synthesis"], graphs["scorer"], w)
        return run

    where = "CUDA" if gpu else f"CPU, {threads} threads"
    print(f"reference architecture (256 px, random weights), synthesis + scoring of {images} images, {where}:")
    timed("reference style (torch, 4 / 1)", reference_style)
    for size in batch_sizes:
        timed(f"torch eager, batch {size}", torch_batched(size))
    for size in batch_sizes:
        timed(f"onnx runtime + io binding, batch {size}", ort_batched(size, sessions))
    if fp16:
        for size in batch_sizes:
            timed(f"onnx runtime fp16 + io binding, batch {size}", ort_batched(size, half))
        w = run_single(sessions["mapping"], codes[:4])
        images = [run_single(s["synthesis"], w) for s in (sessions, half)]
        scores = [score_images(s["synthesis"], s["scorer"], w) for s in (sessions, half)]
        print(f"  fp16 vs fp32 on 4 codes: max abs diff image {np.abs(images[0] - images[1]).max():.3g}, "
              f"scores {np.abs(scores[0] - scores[1]).max():.3g}")
    best_ort = max(v for k, v in rates.items() if k.startswith("onnx"))
    best_torch = max(v for k, v in rates.items() if k.startswith("torch"))
    print(f"  best onnx runtime / reference style: {best_ort / rates['reference style (torch, 4 / 1)']:.1f}x; "
          f"/ best torch eager: {best_ort / best_torch:.2f}x")
    return rates


def main(argv=None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="which", required=True)
    export = sub.add_parser("export", help="torch eager vs ONNX Runtime, synthesis + scoring")
    export.add_argument("--batch-size", type=int, default=64)
    export.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per path")
    export.add_argument("--threads", type=int, default=2)
    sampling = sub.add_parser("sampling", help="Ray Data pipeline vs one process vs reference-style loop")
    sampling.add_argument("--n", type=int, default=20000)
    sampling.add_argument("--reference-n", type=int, default=1600, help="images timed in the slow loop (c)")
    fitting = sub.add_parser("fit", help="parallel Ray fits vs the sequential reference set-up, and alternatives")
    fitting.add_argument("--n", type=int, default=80000)
    fitting.add_argument("--run", default=None, help="run directory with n samples (default: runs/benchmark-fit-N)")
    testing = sub.add_parser("test", help="generation test stage vs a reference-style JPEG loop")
    testing.add_argument("--cases", type=int, default=200)
    testing.add_argument("--reference-cases", type=int, default=20)
    grid_p = sub.add_parser("grid", help="one grid job vs jobs.vectorfind once per cell")
    grid_p.add_argument("--n", default="4000,10000")
    grid_p.add_argument("--ratio", default="0.1,0.2,0.3")
    grid_p.add_argument("--cases", type=int, default=50)
    reference = sub.add_parser("reference", help="the reference architecture: torch eager vs ONNX Runtime")
    reference.add_argument("--images", type=int, default=32, help="images timed per path")
    reference.add_argument("--batch-sizes", default="1,4,16", help="batch sizes swept (torch and ONNX Runtime)")
    reference.add_argument("--threads", type=int, default=2)
    reference.add_argument("--gpu", action="store_true", help="ONNX Runtime on CUDA, torch on the GPU")
    reference.add_argument("--fp16", action="store_true", help="also ONNX Runtime with fp16 graphs (fp32 I/O)")
    args = p.parse_args(argv)
    if args.which == "reference":
        from jobs.grid import parse_list

        sizes = parse_list(args.batch_sizes, "--batch-sizes", int)
        if args.images < 4 or min(sizes) < 1 or args.threads < 1:
            raise UsageError("--images must be >= 4, --batch-sizes and --threads >= 1")
        bench_reference(args.images, sizes, args.threads, args.gpu, args.fp16)
    elif args.which == "grid":
        if args.cases < 1:
            raise UsageError("--cases must be >= 1")
        bench_grid(args.n, args.ratio, args.cases)
    elif args.which == "test":
        if args.cases < 1 or args.reference_cases < 1:
            raise UsageError("--cases and --reference-cases must be >= 1")
        bench_test(args.cases, args.reference_cases)
    elif args.which == "fit":
        if args.n < 1000:
            raise UsageError("--n must be >= 1000")
        bench_fit(args.n, args.run)
    elif args.which == "export":
        if args.batch_size < 1 or args.seconds <= 0 or args.threads < 1:
            raise UsageError("--batch-size and --threads must be >= 1 and --seconds > 0")
        bench_export(args.batch_size, args.seconds, args.threads)
    elif args.which == "sampling":
        if args.n < 1 or args.reference_n < 4:
            raise UsageError("--n must be >= 1 and --reference-n >= 4")
        bench_sampling(args.n, args.reference_n)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
