"""Distributed sampling on a real local Ray instance: determinism, resume, crash survival,
the samples.parquet contract and bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, Capped, call_job, run_job

from compute import samples_store
from compute.resources import Resources, engine_spec
from compute.sampling import SampleActor, SamplingError, sample_table
from compute.seeding import draw_codes
from compute.sessions import make_session, run_single
from compute.tables import read_metadata, vector_matrix

N, SEED = 700, 5


def _resources(actors):
    return Resources(actors=actors, cpus_per_actor=0.5, gpus_per_actor=0.0, threads=1)


@pytest.fixture(scope="module")
def reference(ray_session, bundle, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    table = sample_table(bundle, N, SEED, run, batch_size=64, resources=_resources(2), chunk_size=300)
    return run, table


def test_actor_runs_in_process_without_ray(bundle):
    graphs = {s: bundle.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}
    out = SampleActor(graphs, seed=3, spec=engine_spec(bundle, _resources(1)),
                      score_names=bundle.score_names)({"id": np.array([4, 9])})
    assert set(out) == {"sample_id", "z", "w", *bundle.score_names}
    np.testing.assert_array_equal(out["z"], draw_codes(3, [4, 9], 515))
    sessions = [make_session(graphs[s]) for s in ("mapping", "synthesis", "scorer")]
    expected = run_single(sessions[2], run_single(sessions[1], run_single(sessions[0], out["z"])))
    np.testing.assert_allclose(out["pose"], expected[:, bundle.score_names.index("pose")], atol=1e-6)


def test_result_does_not_depend_on_actor_count_or_batch_size(reference, bundle):
    _, ref = reference
    for actors, batch_size in ((1, 16), (2, 512)):
        other = sample_table(bundle, N, SEED, None, batch_size=batch_size,
                             resources=_resources(actors), chunk_size=300, progress=False)
        np.testing.assert_array_equal(other["sample_id"].to_numpy(), np.arange(N))
        np.testing.assert_array_equal(vector_matrix(other["z"]), vector_matrix(ref["z"]))
        np.testing.assert_allclose(vector_matrix(other["w"]), vector_matrix(ref["w"]), atol=1e-5)
        for name in bundle.score_names:
            np.testing.assert_allclose(other[name].to_numpy(), ref[name].to_numpy(), atol=1e-5)


def test_samples_parquet_schema_and_metadata(reference, bundle):
    run, ref = reference
    table = pq.read_table(run / "samples.parquet")
    assert table.schema.field("sample_id").type == pa.int64()
    assert table.schema.field("z").type == pa.list_(pa.float32(), 515)
    assert table.schema.field("w").type == pa.list_(pa.float32(), 512)
    for name in bundle.score_names:
        assert table.schema.field(name).type == pa.float32()
    assert table.num_rows == N and table.equals(ref)
    # A dataset directory of the chunks, in id order, each part carrying the run's metadata.
    parts = samples_store.parts(run / "samples.parquet")
    assert [p.name for p in parts] == [f"{c:06d}.parquet" for c in range(len(parts))] and len(parts) == -(-N // 300)
    assert all(read_metadata(p.path) == read_metadata(parts[0].path) for p in parts)
    config = samples_store.metadata(run / "samples.parquet")["sampling"]
    assert (config["n"], config["seed"]) == (N, SEED)
    assert config["bundle_manifest_sha256"] == bundle.manifest_sha256
    assert config["group_medians"] == bundle.manifest["group_medians"]
    # The codes really are standard normal draws and w what the mapping makes of them.
    z = vector_matrix(table["z"])
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


class CrashOnceActor(SampleActor):
    """A sampling actor whose first call, in whichever actor claims the marker file, kills its
    process: a hard crash, as an OOM kill or a lost node would look."""

    marker = None  # set by the test; class attributes travel with the pickled class

    def __call__(self, batch):
        if len(batch["id"]):
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
        return super().__call__(batch)


def test_actor_crash_is_survived_with_identical_output(reference, bundle, tmp_path):
    import ray.cloudpickle

    _, ref = reference
    marker = tmp_path / "crashed"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    crashing = type("CrashingActor", (CrashOnceActor,), {"marker": str(marker)})
    table = sample_table(bundle, N, SEED, tmp_path / "run", batch_size=64, resources=_resources(2),
                         chunk_size=300, actor_class=crashing, progress=False)
    assert marker.exists()  # an actor really died
    for name in ("z", "w", *bundle.score_names):
        np.testing.assert_allclose(np.asarray(table[name].to_pylist()), np.asarray(ref[name].to_pylist()),
                                   atol=1e-5)


def test_resume_after_kill_recomputes_only_missing_chunks(reference, bundle_dir, ray_session, tmp_path):
    ref_run, _ = reference
    run = tmp_path / "run"
    gcs = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "jobs.sample", "--address", gcs, "--bundle", str(bundle_dir),
           "--out", str(run), "--n", str(N), "--seed", str(SEED), "--chunk-size", "100",
           "--batch-size", "20", "--actors", "1", "--cpus-per-actor", "0.5"]
    job = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((run / "sample_chunks").glob("*.parquet"))) < 2:
        assert job.poll() is None, job.stdout.read()
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = len(list((run / "sample_chunks").glob("*.parquet")))
    assert 2 <= done < 7 and not (run / "samples.parquet").exists()

    result = run_job(*cmd[2:])
    assert result.returncode == 0, result.stderr
    assert f"{done * 100:,} reused" in result.stdout
    # Chunked at 100 instead of 300: the same samples, so the same table.
    resumed = pq.read_table(run / "samples.parquet")
    expected = pq.read_table(ref_run / "samples.parquet")
    for name in expected.column_names:
        np.testing.assert_allclose(np.asarray(resumed[name].to_pylist()), np.asarray(expected[name].to_pylist()),
                                   atol=1e-5)
    # The finished table supersedes the chunks; a rerun reuses it untouched.
    assert not (run / "sample_chunks").exists()
    first = (run / "samples.parquet").stat().st_mtime_ns
    again = run_job(*cmd[2:])
    assert again.returncode == 0 and "reusing" in again.stdout
    assert (run / "samples.parquet").stat().st_mtime_ns == first


def test_other_seed_or_n_in_an_existing_run_is_refused(reference, bundle):
    run, _ = reference
    for n, seed, what in ((N, SEED + 1, "seed"), (N + 1, SEED, "n")):
        with pytest.raises(SamplingError, match=what):
            sample_table(bundle, n, seed, run, chunk_size=300, resources=_resources(1))


def _corrupt(bundle_dir, tmp_path):
    broken = tmp_path / "corrupt"
    shutil.copytree(bundle_dir, broken)
    (broken / "mapping.onnx").write_bytes(b"broken")
    return broken


def _no_pose(bundle_dir, tmp_path):
    broken = tmp_path / "nopose"
    shutil.copytree(bundle_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["score_names"] = [s for s in manifest["score_names"] if s != "pose"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return broken


@pytest.mark.parametrize("extra, make_bundle, message", [
    (["--n", "0"], None, "n must be a positive"),
    (["--seed", "-1"], None, "seed must be an integer in [0, 2**63)"),
    (["--n", "99999999999999999999"], None, "need about"),
    ([], lambda b, t: t / "missing", "bundle directory not found"),
    ([], _corrupt, "sha256"),
    ([], _no_pose, "outputs 6 scores but the manifest names 5"),
])
def test_bad_input_is_one_line_exit_2(bundle_dir, tmp_path, extra, make_bundle, message):
    bundle_path = make_bundle(bundle_dir, tmp_path) if make_bundle else bundle_dir
    run = tmp_path / "run"
    result = call_job("jobs.sample", "--bundle", str(bundle_path), "--out", str(run), "--n", "10", *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (run / "samples.parquet").exists()


def test_wide_graphs_get_fewer_images_per_call(bundle):
    """Calls are capped by the widest activation, not only by pixels: a 512-channel 64-px
    layer (8 MiB per image) gets 128 MiB / 8 MiB = 16 images, the built-in model its 64."""
    from onnx import TensorProto, helper, numpy_helper

    from compute.sessions import ACTIVATION_BYTES, images_per_call, make_session

    weight = numpy_helper.from_array(np.full((3, 512, 1, 1), 0.01, np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["ws"], ["wide"]), helper.make_node("Conv", ["wide", "weight"], ["image"])],
        "wide", [helper.make_tensor_value_info("ws", TensorProto.FLOAT, ["batch", 512, 64, 64])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])], [weight])
    wide = make_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert wide.largest_activation == 512 * 64 * 64 * 4
    assert images_per_call(wide) == ACTIVATION_BYTES["cpu"] // (512 * 64 * 64 * 4) == 16
    assert images_per_call(make_session(bundle.graph_bytes("synthesis"))) == 64


def test_driver_side_drawing_is_sized_like_the_pipeline(bundle):
    """Reports, galleries, editors and exports draw their images through `synthesize`, in
    calls of images_per_call: a 1024-px report grid drawn in one call held 18 GB."""
    from compute.sessions import make_session, run_single, synthesize

    session = make_session(bundle.graph_bytes("synthesis"))
    w = run_single(make_session(bundle.graph_bytes("mapping")), np.random.default_rng(0).standard_normal((12, bundle.z_dim)))
    capped = Capped(session)
    images = synthesize(capped, w)
    assert capped.calls == [5, 5, 2]
    assert np.abs(images - run_single(session, w)).max() <= 1e-5


class PidActor(SampleActor):
    """Records the process that computes (and so writes) each call's rows."""

    marker_dir = None

    def __call__(self, batch):
        if len(batch["id"]):
            Path(self.marker_dir, str(os.getpid())).touch()
        return super().__call__(batch)


def test_actors_write_their_own_chunks(reference, bundle, tmp_path):
    """The chunk files are written in the actors' processes, and the committed table is the
    reference's, chunk for chunk: nothing passes through the driver but records."""
    import ray.cloudpickle

    ref_run, _ = reference
    markers = tmp_path / "pids"
    markers.mkdir()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor = type("Pids", (PidActor,), {"marker_dir": str(markers)})
    sample_table(bundle, N, SEED, tmp_path / "run", batch_size=64, resources=_resources(2), chunk_size=300,
                 actor_class=actor, progress=False, read_back=False)
    writers = {int(p.name) for p in markers.iterdir()}
    assert writers and os.getpid() not in writers
    ours, theirs = samples_store.parts(tmp_path / "run" / "samples.parquet"), samples_store.parts(ref_run / "samples.parquet")
    assert [p.name for p in ours] == [p.name for p in theirs]
    for a, b in zip(ours, theirs):
        assert pq.read_table(a.path).equals(pq.read_table(b.path))
