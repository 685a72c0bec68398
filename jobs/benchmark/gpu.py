"""gpu: the whole GPU side-by-side on the 256-px reference architecture (genforce StyleGAN +
Property Score CNN, random weights in the reference's key layout), in one run:

  (a) torch with everything on the GPU, fp32 and fp16 autocast: the anchor;
  (b) ONNX Runtime in one process, the sampling engine (one fused graph, fixed-shape calls,
      device buffers), fp32 and fp16 over a sweep of images per call; cuDNN's heuristic vs
      exhaustive search and a CUDA graph at the best fp16 call size;
  (c) the Ray pipeline, `python -m jobs.sample` with its default GPU flags;
  (d) fp16 and fp32 (TF32) scores vs fp32 without TF32 on the same codes, as a share of
      each score's spread;
with GPU utilisation and per-process GPU memory sampled by nvidia-smi throughout. Every
path warms up at the shape it times. Ends with one `gpu:` line of images/s and ratios.
"""
from __future__ import annotations

import gc
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from compute.seeding import draw_codes


class GpuMonitor:
    """nvidia-smi sampled every 0.2 s on a thread: GPU utilisation and per-process memory."""

    def __init__(self):
        self.utilisation, self.per_process, self._stop = [], {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _query(self, *args: str) -> list[list[str]]:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
        return [[v.strip() for v in line.split(",")] for line in out.strip().splitlines() if line.strip()]

    def _run(self):
        while not self._stop.is_set():
            try:
                for row in self._query("--query-gpu=utilization.gpu"):
                    self.utilisation.append(float(row[0]))
                for pid, used in self._query("--query-compute-apps=pid,used_memory"):
                    self.per_process[pid] = max(self.per_process.get(pid, 0.0), float(used) / 1024)  # GiB
            except (OSError, ValueError, subprocess.SubprocessError):
                pass  # one missed sample
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=15)

    def summary(self) -> str:
        if not self.utilisation:
            return "nvidia-smi: no samples"
        u = np.asarray(self.utilisation)
        peak = max(self.per_process.values(), default=0.0)
        return (f"GPU busy: median {np.median(u):.0f}%, mean {u.mean():.0f}%, {100 * (u >= 80).mean():.0f}% of "
                f"samples >= 80%; peak GPU memory of one process {peak:.1f} GiB ({len(self.per_process)} processes)")


def _rate(run, images: int) -> float:
    run()  # warm-up at the timed shape
    started = time.perf_counter()
    run()
    return images / (time.perf_counter() - started)


def reference_bundle(out: Path) -> Path:
    """A 256-px reference bundle of random weights, exported once into out/bundle."""
    from export.models import ExportOptions, export_model
    from export.ohlora import write_random_checkpoints

    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        generator, scorer = write_random_checkpoints(out / "checkpoints", seed=0)
        print(f"exporting a random-weight reference bundle to {bundle} ...", flush=True)
        export_model("ohlora", bundle, ExportOptions(generator=generator, scorer=scorer), overwrite=True)
    return bundle


def bench_torch(bundle_dir: Path, codes: np.ndarray, batch: int, use_gpu: bool) -> dict[str, float]:
    import torch

    from export.ohlora import ohlora_spec

    checkpoints = bundle_dir.parent / "checkpoints"
    spec = ohlora_spec(checkpoints / "generator.pth", checkpoints / "property_score_cnn.pth")
    device = torch.device("cuda" if use_gpu else "cpu")
    torch.backends.cudnn.benchmark = True
    modules = [m.to(device).eval() for m in (spec.mapping, spec.synthesis, spec.scorer)]
    z = torch.from_numpy(codes).to(device)
    rates = {}
    for label, autocast in (("fp32", False), ("fp16 autocast", True)):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=autocast and use_gpu):
                for lo in range(0, len(z), batch):
                    w = modules[0](z[lo:lo + batch])
                    ws = w.unsqueeze(1).repeat(1, spec.num_ws or 1, 1) if spec.num_ws else w
                    modules[2](modules[1](ws))
            if use_gpu:
                torch.cuda.synchronize()
        rates[label] = _rate(run, len(z))
        print(f"  (a) torch, all on the {device.type}, {label}, batch {batch}: {rates[label]:9,.0f} images/s", flush=True)
    del modules
    if use_gpu:
        torch.cuda.empty_cache()
    return rates


def _spec(bundle, use_gpu: bool, fp16: bool, call: int | None = None, cuda_graph: bool = False):
    """One single-threaded engine on the whole GPU (or the CPU), as a sampling actor builds it."""
    from compute.resources import Resources, engine_spec

    return engine_spec(bundle, Resources(1, 1.0, 1.0 if use_gpu else 0.0, 1, fp16=fp16, call_images=call,
                                         cuda_graph=cuda_graph))


def bench_onnx(bundle, codes: np.ndarray, call_sizes: list[int], use_gpu: bool) -> dict:
    from compute import sessions
    from compute.engine import SampleEngine, prepare_graphs

    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}
    results: dict = {"rates": {}, "scores": {}}
    for precision in ("fp32", "fp16"):
        started = time.perf_counter()
        prepared = prepare_graphs(graphs, _spec(bundle, use_gpu, precision == "fp16"))
        if precision == "fp32":
            results["scores"]["exact"] = exact_scores(bundle, prepared, codes[:1024], call_sizes[0], use_gpu)
        print(f"  prepared the {precision} graph in {time.perf_counter() - started:.1f}s", flush=True)
        for call in call_sizes:
            engine = SampleEngine(prepared, _spec(bundle, use_gpu, precision == "fp16", call))
            rate = _rate(lambda: engine(codes), len(codes))
            results["rates"][(precision, call)] = rate
            print(f"  (b) onnx runtime {precision}, {call:4d} images per call: {rate:9,.0f} images/s", flush=True)
            if call == call_sizes[0]:
                results["scores"][precision] = engine(codes[:1024])[1]
            del engine
            gc.collect()
    best = max(call_sizes, key=lambda c: results["rates"][("fp16", c)])
    results["best_call"] = best
    if use_gpu:
        variants = {"exhaustive cuDNN search": dict(search="EXHAUSTIVE"), "CUDA graph": dict(cuda_graph=True),
                    "NHWC layout": dict(nhwc=True)}
        for label, variant in variants.items():
            saved, saved_nhwc = sessions.CUDNN_SEARCH, sessions.PREFER_NHWC
            sessions.CUDNN_SEARCH = variant.get("search", saved)
            sessions.PREFER_NHWC = variant.get("nhwc", saved_nhwc)
            try:
                started = time.perf_counter()
                engine = SampleEngine(prepared, _spec(bundle, True, True, best, variant.get("cuda_graph", False)))
                engine(codes[:best])
                first = time.perf_counter() - started
                rate = _rate(lambda: engine(codes), len(codes))
                print(f"  (b) onnx runtime fp16, {best} per call, {label}: {rate:9,.0f} images/s "
                      f"(session + first call {first:.1f}s)", flush=True)
                del engine
            except Exception as exc:  # a CUDA graph needs every node on the GPU: say why not
                print(f"  (b) onnx runtime fp16, {label}: not possible here ({str(exc).splitlines()[0][:200]})")
            finally:
                sessions.CUDNN_SEARCH, sessions.PREFER_NHWC = saved, saved_nhwc
                gc.collect()
    return results


def exact_scores(bundle, prepared: dict, codes: np.ndarray, call: int, use_gpu: bool) -> np.ndarray:
    """Scores of the float32 graph with TF32 off: the reference the fp16 and fp32 rows are
    compared with in (d). TF32 rounds convolution inputs to fp16's 10-bit mantissa, so the
    fp32 rows' scores are not exact themselves."""
    from compute import sessions
    from compute.engine import SampleEngine

    saved, sessions.USE_TF32 = sessions.USE_TF32, False
    try:
        engine = SampleEngine(prepared, _spec(bundle, use_gpu, False, call))
        return engine(codes)[1]
    finally:
        sessions.USE_TF32 = saved
        gc.collect()


def bench_pipeline(bundle_dir: Path, out: Path, n: int) -> tuple[float, float | None, str]:
    import shutil

    run = out / "pipeline-run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "jobs.sample", "--bundle", str(bundle_dir), "--out", str(run), "--n", str(n)]
    print(f"  (c) {' '.join(['python', *cmd[1:]])}", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    shutil.rmtree(run, ignore_errors=True)
    line = next((l for l in done.stdout.splitlines() if l.startswith("sampled n=")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"jobs.sample failed: {(done.stderr or done.stdout)[-1500:]}")
    total = float(re.search(r"s: ([\d,]+) images/s", line).group(1).replace(",", ""))
    steady = re.search(r"\(([\d,]+) after the first (?:batch|chunk)\)", line)
    warnings = [l for l in done.stderr.splitlines() if "WARNING" in l or "warning" in l.lower()]
    print(f"      {line}", flush=True)
    for w in warnings[:5]:
        print(f"      stderr: {w[:200]}")
    return total, float(steady.group(1).replace(",", "")) if steady else None, line


def bench_gpu(out: Path, images: int, call_sizes: list[int], n: int, use_gpu: bool = True) -> dict:
    from compute.bundle import load_bundle

    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = reference_bundle(out)
    bundle = load_bundle(bundle_dir)
    codes = draw_codes(0, np.arange(images), bundle.z_dim)
    print(f"gpu: 256-px reference architecture (random weights), {images:,} images per timed path:", flush=True)
    with GpuMonitor() as single:
        torch_rates = bench_torch(bundle_dir, codes, 256, use_gpu)
        onnx = bench_onnx(bundle, codes, call_sizes, use_gpu)
    print(f"  (a, b) {single.summary()}", flush=True)
    from compute.fp16_check import spread_share

    drift = {label: spread_share(onnx["scores"]["exact"], onnx["scores"][key])
             for label, key in (("fp16", "fp16"), ("fp32 with TF32", "fp32"))}
    relative = drift["fp16"]
    nans = int(sum(np.isnan(s).sum() for s in onnx["scores"].values()))
    for label, values in drift.items():
        print(f"  (d) {label} vs fp32 without TF32 on 1,024 codes, max |difference| / score spread: "
              + ", ".join(f"{name} {r:.2%}" for name, r in zip(bundle.score_names, values)))
    print(f"  (d) NaN: {nans}")
    with GpuMonitor() as piped:
        total, steady, _ = bench_pipeline(bundle_dir, out, n)
    print(f"  (c) {piped.summary()}", flush=True)
    best = onnx["best_call"]
    single_rate = onnx["rates"][("fp16", best)]
    per_actor = max(piped.per_process.values(), default=float("nan"))
    pipeline = steady or total
    print(f"gpu: pipeline {total:,.0f} images/s ({pipeline:,.0f} after start-up); one process fp16 "
          f"{single_rate:,.0f} ({best} per call) = {single_rate / torch_rates['fp16 autocast']:.2f}x torch fp16 "
          f"({torch_rates['fp16 autocast']:,.0f}); pipeline / one process {pipeline / single_rate:.2f}; "
          f"fp16 vs fp32 {relative.max():.2%} of spread; NaN {nans}; peak GPU memory per actor {per_actor:.1f} GiB")
    return {"torch": torch_rates, "onnx": onnx["rates"], "pipeline": total, "steady": steady,
            "relative": relative, "nans": nans}
