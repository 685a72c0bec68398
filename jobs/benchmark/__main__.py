"""python -m jobs.benchmark {export,sampling,ceiling,scale,fit,test,grid,reference,editor,stylegan2,estimators,gpu} [options]"""
from __future__ import annotations

import sys
from pathlib import Path

from jobs.benchmark import __doc__ as overview
from jobs.cli import UsageError, parse_list, parser, run_main
from vectors.estimators import ESTIMATORS


def main(argv=None) -> None:
    p = parser(overview.split("\n\n")[0])
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
    fitting.add_argument("--run", type=Path, default=None, help="run directory with n samples "
                                                                "(default: runs/benchmark-fit-N)")
    testing = sub.add_parser("test", help="generation test stage vs a reference-style JPEG loop")
    testing.add_argument("--n", type=int, default=8000, help="samples the timed directions are fitted on")
    testing.add_argument("--cases", type=int, default=200)
    testing.add_argument("--reference-cases", type=int, default=20)
    grid = sub.add_parser("grid", help="one grid run vs the whole method once per cell")
    grid.add_argument("--n", default="4000,10000")
    grid.add_argument("--ratio", default="0.1,0.2,0.3")
    grid.add_argument("--cases", type=int, default=50)
    reference = sub.add_parser("reference", help="the reference architecture: torch eager vs ONNX Runtime")
    reference.add_argument("--images", type=int, default=32, help="images timed per path")
    reference.add_argument("--batch-sizes", default="1,4,16", help="batch sizes swept (torch and ONNX Runtime)")
    reference.add_argument("--threads", type=int, default=2)
    reference.add_argument("--gpu", action="store_true", help="ONNX Runtime on CUDA, torch on the GPU")
    reference.add_argument("--fp16", action="store_true", help="also ONNX Runtime with fp16 graphs (fp32 I/O)")
    stylegan2 = sub.add_parser("stylegan2", help="a StyleGAN2 generator (config-f widths): torch eager vs ONNX Runtime")
    stylegan2.add_argument("--resolution", type=int, default=256)
    stylegan2.add_argument("--channel-multiplier", type=int, default=2, help="2: config-f widths")
    stylegan2.add_argument("--images", type=int, default=8, help="images timed per path and batch size")
    stylegan2.add_argument("--batch-sizes", default="1,4")
    stylegan2.add_argument("--threads", type=int, default=2)
    stylegan2.add_argument("--gpu", action="store_true", help="torch on the GPU, ONNX Runtime on CUDA")
    estimators = sub.add_parser("estimators", help="direction estimators side by side on the same test cases, "
                                                   "several seeds")
    estimators.add_argument("--bundle", type=Path, default=None, help="model bundle (default: built-in model)")
    estimators.add_argument("--n", type=int, default=80000)
    estimators.add_argument("--seeds", default="0,1,2")
    estimators.add_argument("--cases", type=int, default=500)
    estimators.add_argument("--ratio", type=float, default=0.2)
    estimators.add_argument("--estimators", default=",".join(ESTIMATORS))
    estimators.add_argument("--out", type=Path, default=None,
                            help="runs directory (default: runs/benchmark-estimators/<model>)")
    ceiling = sub.add_parser("ceiling", help="the sampling pipeline with inference replaced by zeros: its own ceiling")
    ceiling.add_argument("--resolution", type=int, default=256, help="image size whose reference dims are used")
    ceiling.add_argument("--n", type=int, default=200000)
    scale = sub.add_parser("scale", help="the sampling driver's peak memory and images/s as n grows (built-in model)")
    scale.add_argument("--n", default="100000,400000,2000000", help="sample counts, each in a fresh driver")
    scale.add_argument("--out", type=Path, default=Path("runs/benchmark-scale"),
                       help="where each n's samples are written (and removed after it)")
    gpu = sub.add_parser("gpu", help="the GPU side-by-side on the 256-px reference: torch, ONNX Runtime in one "
                                     "process (fp32/fp16, call sizes), the Ray pipeline, GPU use, fp16 differences")
    gpu.add_argument("--images", type=int, default=4096, help="images timed per single-process path")
    gpu.add_argument("--call-sizes", default="32,64,128,256", help="ONNX Runtime images per call, swept")
    gpu.add_argument("--n", type=int, default=100000, help="samples drawn by the pipeline (jobs.sample)")
    gpu.add_argument("--out", type=Path, default=Path("runs/benchmark-gpu"),
                     help="where the random-weight reference bundle is kept between runs")
    editor = sub.add_parser("editor", help="the editor graph vs the test stage's path, batch 1 and 64")
    editor.add_argument("--run", type=Path, default=Path("runs/benchmark-editor"),
                        help="a tested run of the built-in model (made with n = 4,000 if absent)")
    editor.add_argument("--batch-sizes", default="1,64")
    editor.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per path and size")
    editor.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    if args.which == "export":
        if args.batch_size < 1 or args.seconds <= 0 or args.threads < 1:
            raise UsageError("--batch-size and --threads must be >= 1 and --seconds > 0")
        from jobs.benchmark.export_cmp import bench_export

        bench_export(args.batch_size, args.seconds, args.threads)
        return
    if args.which == "reference":
        sizes = parse_list(args.batch_sizes, "--batch-sizes", int)
        if args.images < 4 or min(sizes) < 1 or args.threads < 1:
            raise UsageError("--images must be >= 4, --batch-sizes and --threads >= 1")
        from jobs.benchmark.reference import bench_reference

        bench_reference(args.images, sizes, args.threads, args.gpu, args.fp16)
        return
    if args.which == "stylegan2":
        sizes = parse_list(args.batch_sizes, "--batch-sizes", int)
        if args.resolution < 8 or args.resolution & (args.resolution - 1) or args.images < 1 or min(sizes) < 1:
            raise UsageError("--resolution must be a power of two >= 8, --images and --batch-sizes >= 1")
        from jobs.benchmark.stylegan2 import bench_stylegan2

        bench_stylegan2(args.resolution, args.channel_multiplier, args.images, sizes, args.threads, args.gpu)
        return
    if args.which == "gpu":
        sizes = parse_list(args.call_sizes, "--call-sizes", int)
        if args.images < max(sizes) or min(sizes) < 1 or args.n < 1000:
            raise UsageError("--call-sizes must be >= 1, --images at least the largest call size, --n >= 1000")
        import onnxruntime

        from compute.resources import local_gpu_count

        if local_gpu_count() < 1 or "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise UsageError("jobs.benchmark gpu needs an NVIDIA GPU and onnxruntime-gpu (pip install -e '.[gpu]'); "
                             "none here")
        from jobs.benchmark.gpu import bench_gpu

        bench_gpu(args.out, args.images, sizes, args.n)
        return
    if args.which == "editor":
        sizes = parse_list(args.batch_sizes, "--batch-sizes", int)
        if min(sizes) < 1 or args.seconds <= 0 or args.threads < 1:
            raise UsageError("--batch-sizes and --threads must be >= 1 and --seconds > 0")
    if args.which == "estimators":
        picked = [e for e in ESTIMATORS if e in parse_list(args.estimators, "--estimators", str)]
        unknown = sorted(set(parse_list(args.estimators, "--estimators", str)) - set(ESTIMATORS))
        if unknown or args.n < 1000 or args.cases < 1:
            raise UsageError(f"--estimators from {', '.join(ESTIMATORS)} (unknown: {', '.join(unknown) or 'none'}); "
                             f"--n >= 1000, --cases >= 1")
    if args.which == "ceiling" and (args.n < 1000 or args.resolution < 8 or args.resolution & (args.resolution - 1)):
        raise UsageError("--n must be >= 1000 and --resolution a power of two >= 8")
    if args.which == "sampling" and (args.n < 1 or args.reference_n < 4):
        raise UsageError("--n must be >= 1 and --reference-n >= 4")
    if args.which == "fit" and args.n < 1000:
        raise UsageError("--n must be >= 1000")
    if args.which == "test" and (args.n < 1 or args.cases < 1 or args.reference_cases < 1):
        raise UsageError("--n, --cases and --reference-cases must be >= 1")
    if args.which == "scale":
        from jobs.benchmark.scale import bench_scale

        ns = parse_list(args.n, "--n", int)
        if min(ns) < 1:
            raise UsageError("--n values must be >= 1")
        bench_scale(ns, args.out)
        return
    if args.which == "grid" and args.cases < 1:
        raise UsageError("--cases must be >= 1")
    # The Ray-side comparisons run on the built-in bundle in a local (or the submitted) cluster.
    from jobs.cli.bundles import resolve_bundle
    from jobs.cli.ray import init_ray

    bundle = resolve_bundle(getattr(args, "bundle", None))
    init_ray()
    if args.which == "sampling":
        from jobs.benchmark.sampling import bench_sampling

        bench_sampling(bundle, args.n, args.reference_n)
    elif args.which == "ceiling":
        from compute.resources import plan_resources
        from jobs.benchmark.ceiling import bench_ceiling

        bench_ceiling(bundle, args.resolution, args.n, plan_resources())
    elif args.which == "fit":
        from jobs.benchmark.fitting import bench_fit

        bench_fit(bundle, args.n, args.run or Path(f"runs/benchmark-fit-{args.n}"))
    elif args.which == "test":
        from jobs.benchmark.generation_test import bench_test

        bench_test(bundle, args.n, args.cases, args.reference_cases, Path("runs/benchmark-test"))
    elif args.which == "estimators":
        from compute.resources import plan_resources
        from jobs.benchmark.estimators import bench_estimators

        out = args.out or Path("runs/benchmark-estimators") / bundle.manifest["model"]
        bench_estimators(bundle, out, args.n, parse_list(args.seeds, "--seeds", int), args.cases, picked,
                         args.ratio, plan_resources())
    elif args.which == "editor":
        from compute.pipeline import run_method
        from jobs.benchmark.editor_cmp import bench_editor

        if not (args.run / "cases.parquet").is_file():
            print(f"making a tested run of the built-in model in {args.run} (n = 4,000, 50 cases)", flush=True)
            run_method(args.run, bundle, n=4000, cases=50)
        bench_editor(bundle, args.run, args.run / "editor", parse_list(args.batch_sizes, "--batch-sizes", int),
                     args.seconds, args.threads)
    else:
        from jobs.benchmark.grid_cmp import bench_grid

        bench_grid(bundle, parse_list(args.n, "--n", int), parse_list(args.ratio, "--ratio", float), args.cases)


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
