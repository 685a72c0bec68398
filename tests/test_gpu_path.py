"""The GPU path's CPU-side parts: planning a machine with GPUs, the sampling engine's fixed
calls, the pipeline's own ceiling, and the GPU benchmark's command line."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from compute.engine import NullEngine, SampleEngine, prepare_graphs
from compute.resources import ResourceError, Resources, engine_spec, plan_resources
from compute.sampling import sample_table
from compute.seeding import draw_codes
from compute.sessions import make_session, run_single, synthesize_and_score
from conftest import call_job, run_job


def test_a_gpu_machine_is_planned_one_actor_per_gpu_share(caplog):
    with caplog.at_level(logging.WARNING):
        one = plan_resources(totals={"CPU": 16, "GPU": 1})
        two = plan_resources(totals={"CPU": 16, "GPU": 2}, gpus_per_actor=1, cpus_per_actor=4)
    assert (one.actors, one.gpus_per_actor) == (2, 0.5)  # the measured default share
    assert (two.actors, two.gpus_per_actor, two.cpus_per_actor) == (2, 1.0, 4.0)  # was refused: planned per CPU
    assert "GPU nodes join" not in caplog.text
    cpu = plan_resources(totals={"CPU": 2, "GPU": 0})
    assert (cpu.actors, cpu.gpus_per_actor, cpu.cpus_per_actor) == (2, 0.0, 0.5)  # no GPU: as before
    with caplog.at_level(logging.WARNING):
        plan_resources(totals={"CPU": 4, "GPU": 0}, gpus_per_actor=0.5)
    assert "GPU nodes join" in caplog.text  # asked for GPUs the cluster lacks: still said
    with pytest.raises(ResourceError, match="images per call"):
        plan_resources(totals={"CPU": 2}, call_images=0)


def test_a_local_instance_with_gpus_plans_gpu_actors_without_warnings(ray_session, bundle, bundle_dir, tmp_path):
    """Two GPUs given to the local instance through Ray's own resource argument (--num-gpus):
    4 actors of 0.5 GPU, no spurious warning; without a real GPU each falls back to the CPU,
    running the fp32 graph, so the samples equal a CPU run's."""
    run = tmp_path / "run"
    result = run_job("jobs.sample", "--bundle", str(bundle_dir), "--out", str(run), "--n", "600", "--seed", "2",
                     "--num-gpus", "2", "--num-cpus", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with 4 GPU actors" in result.stdout, result.stdout
    for noise in ("GPU nodes join", "Specifying both num_cpus and num_gpus", "Token authentication is enabled"):
        assert noise not in result.stderr, result.stderr[-3000:]
    gpu_planned = pq.read_table(run / "samples.parquet")
    cpu = sample_table(bundle, 600, 2, None, resources=Resources(2, 0.5, 0.0, 1), progress=False)
    for name in ("z", "w", *bundle.score_names):
        np.testing.assert_array_equal(np.asarray(gpu_planned[name].to_pylist()), np.asarray(cpu[name].to_pylist()))


def test_the_engine_pads_every_call_to_one_shape_and_matches_the_three_graphs(bundle):
    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}
    spec = engine_spec(bundle, Resources(1, 1.0, 0.0, 2, call_images=48))
    engine = SampleEngine(prepare_graphs(graphs, spec), spec)
    shapes = []
    session_run = engine.session.run
    engine.session.run = lambda names, feeds: shapes.append(next(iter(feeds.values())).shape) or session_run(names, feeds)
    z = draw_codes(1, np.arange(130), bundle.z_dim)
    w, scores = engine(z)
    assert shapes == [(48, bundle.z_dim)] * 3  # 130 codes: 48 + 48 + 34 padded to 48
    sessions = {s: make_session(g, 2) for s, g in graphs.items()}
    w_ref = run_single(sessions["mapping"], z)
    np.testing.assert_allclose(w, w_ref, atol=1e-6)
    np.testing.assert_allclose(scores, synthesize_and_score(sessions["synthesis"], sessions["scorer"], w_ref),
                               atol=1e-5)
    null_w, null_scores = NullEngine(None, spec)(z)
    assert null_w.shape == w.shape and null_scores.shape == scores.shape and not null_w.any()


def test_ceiling_benchmark_prints_its_line(ray_session):
    """In-process on the session's Ray (two CPUs, as a fresh local instance on CI has)."""
    result = call_job("jobs.benchmark.__main__", "ceiling", "--resolution", "256", "--n", "4000")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ceiling: ") and last.endswith(" images/s"), result.stdout
    assert float(last.split()[1].replace(",", "")) > 0


def test_gpu_benchmark_help_and_its_one_line_refusal_without_a_gpu():
    helped = call_job("jobs.benchmark.__main__", "gpu", "--help")
    assert helped.returncode == 0 and "--call-sizes" in helped.stdout
    refused = call_job("jobs.benchmark.__main__", "gpu")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "needs an NVIDIA GPU" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr


def test_cuda_settings_are_stated_choices():
    """What an fp16 sampling session asks of CUDA: TF32 off (its float32 islands are there for
    precision, and TF32 rounds matrix inputs as fp16 does), the arena bounded by the actor's
    share; float32 graphs keep TF32 on (2.4x faster on an H200), unless a benchmark turns it
    off for its reference scores."""
    from compute import sessions

    half = sessions.cuda_options(8 << 30, fp16=True)
    full = sessions.cuda_options()
    assert (half["use_tf32"], half["gpu_mem_limit"], half["arena_extend_strategy"]) == ("0", str(8 << 30),
                                                                                     "kSameAsRequested")
    assert full["use_tf32"] == "1" and "gpu_mem_limit" not in full and "prefer_nhwc" not in half
    saved, sessions.USE_TF32 = sessions.USE_TF32, False
    try:
        assert sessions.cuda_options()["use_tf32"] == "0"
    finally:
        sessions.USE_TF32 = saved
