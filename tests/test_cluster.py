"""cluster.yaml against Ray's own schema, `ray job submit` on a real local cluster, and
GPU placement on a simulated two-node cluster."""
from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from conftest import REPO


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["node_config"]["InstanceType"].startswith("m5.")
    gpu = [n for n in nodes.values() if n["node_config"]["InstanceType"].startswith("g5.")]
    assert gpu and gpu[0]["max_workers"] >= 1
    assert any('[gpu]' in c for c in config["setup_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in (REPO / "cluster.yaml").read_text()
    broken = copy.deepcopy(config)
    broken["available_node_types"]["worker_gpu"]["not_a_key"] = 1
    with pytest.raises(Exception, match="not_a_key"):
        validate_config(prepare_config(broken))


def _free_ports(count: int) -> list[int]:
    """Distinct free ports: every socket stays bound until all are picked, so the kernel
    cannot hand the same port out twice (one at a time, CI once got the dashboard's port
    again for the agent and `ray start` refused)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pids_using(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _stop_cluster(temp_dir: str) -> None:
    """Stop only the cluster whose processes run under temp_dir (`ray stop` would stop all)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_using(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _pids_using(temp_dir) and time.time() < deadline:
            time.sleep(0.2)


def test_ray_job_submit_runs_the_main_job_on_a_local_cluster(ray_session, bundle_dir, tmp_path, s3_server):
    temp_dir = tempfile.mkdtemp(prefix="vfray", dir="/tmp")  # short: Ray's socket paths have a length limit
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port", "node-manager-port", "object-manager-port")
    port, dashboard, *agent_ports = _free_ports(2 + len(names))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    try:
        # Every port explicit: the test session's own instance already holds the defaults.
        ports = [f"--{name}={number}" for name, number in zip(names, agent_ports)]
        started = subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1",
                                  "--dashboard-host", "127.0.0.1", "--port", str(port), "--dashboard-port",
                                  str(dashboard), *ports, "--num-cpus", "2", "--temp-dir", temp_dir,
                                  "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        out = tmp_path / "submitted"
        cmd = [ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
               "python", "-m", "jobs.vectorfind", "--out", str(out), "--n", "1200", "--cases", "6",
               "--bundle", str(bundle_dir)]
        for attempt in range(10):  # the job agent may need a few seconds after `ray start`
            result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent" not in result.stdout + result.stderr:
                break
            time.sleep(3)
        assert result.returncode == 0 and "succeeded" in result.stdout + result.stderr, result.stdout[-3000:]
        for name in ("samples.parquet", "vectors.parquet", "cases.parquet", "summary.json", "report.md"):
            assert (out / name).is_file() or name == "samples.parquet" and (out / name).is_dir(), name
        # Sampling into an object store (docs/storage.md): the cluster's actors, which write the
        # chunks, have the store's AWS variables from the environment `ray start` ran in. (The
        # main job's other stages in a store: tests/test_object_storage.py.)
        bucket = f"s3://{s3_server.bucket}/runs/submitted"
        sample = cmd[:cmd.index("jobs.vectorfind")] + ["jobs.sample", "--out", bucket, "--n", "2100",
                                                       "--bundle", str(bundle_dir)]
        stored = subprocess.run(sample, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert stored.returncode == 0 and "succeeded" in stored.stdout + stored.stderr, stored.stdout[-3000:]
        keys = {i.path.rsplit("runs/submitted/", 1)[1] for i in s3_server.fs.get_file_info(
            pafs.FileSelector(f"{s3_server.bucket}/runs/submitted", recursive=True)) if i.type == pafs.FileType.File}
        assert {"samples.parquet/_commit.json", "samples.parquet/000000.parquet", "samples.parquet/000001.parquet",
                "samples.parquet/000002.parquet"} <= keys, keys
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not _pids_using(temp_dir)
    # Only that cluster stopped: the test session's own instance still runs tasks.
    assert ray_session.get(ray_session.remote(lambda: 41 + 1).remote()) == 42


MULTINODE = r"""
import json, os, sys
import numpy as np
from jobs.cli.ray import stay_on_loopback
stay_on_loopback()
import ray
from ray.cluster_utils import Cluster
import compute.sampling as cs
from compute.bundle import load_bundle

bundle_dir, marker_dir = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
ray.init(address=cluster.address)
Plain = cs.SampleActor

class Where(Plain):  # records the node each actor runs on
    def __init__(self, **kw):
        open(os.path.join(marker_dir, ray.get_runtime_context().get_node_id()), "w").close()
        super().__init__(**kw)

b = load_bundle(bundle_dir)
table = cs.sample_table(b, 300, 4, None, batch_size=64, resources=cs.Resources(2, 0.5, 0.5, 1), actor_class=Where,
                        progress=False)
single = Plain({s: b.graph_bytes(s) for s in ("mapping", "synthesis", "scorer")}, seed=4,
               spec=cs.engine_spec(b, cs.Resources(1, 1.0, 0.0, 1)), score_names=b.score_names)({"id": np.arange(300)})
diff = max(float(np.abs(np.asarray(table[c].to_pylist()) - single[c]).max()) for c in ("z", "w", *b.score_names))

# Into an object store: the actors (all on the second node) write every chunk themselves;
# the driver's records carry no bytes.
from compute import samples_store
from compute.storage import place
sent, consume = [], cs._consume
def spy(records, *args):
    for record in records:
        sent.extend(len(d) for d in record["data"].tolist())
        consume([record], *args)
cs._consume = spy
run = place(sys.argv[3])
cs.sample_table(b, 300, 4, run, batch_size=64, chunk_size=100, resources=cs.Resources(2, 0.5, 0.5, 1),
                actor_class=Where, progress=False, read_back=False)
stored = samples_store.read_samples(run / "samples.parquet")
print("RESULT " + json.dumps({"gpu_node": gpu_node.node_id, "actor_nodes": sorted(os.listdir(marker_dir)),
                              "max_diff": diff, "sent": sent, "stored_equal": stored.equals(table)}))
ray.shutdown()
cluster.shutdown()
"""


def test_gpu_actors_run_only_on_the_gpu_node_and_fall_back_to_cpu(bundle_dir, tmp_path, s3_server):
    """And on that node they write the chunks of a run in an object store themselves."""
    markers = tmp_path / "nodes"
    markers.mkdir()
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", MULTINODE, str(bundle_dir), str(markers),
                             f"s3://{s3_server.bucket}/runs/two-nodes"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    found = json.loads(line[len("RESULT "):])
    assert found["actor_nodes"] and set(found["actor_nodes"]) == {found["gpu_node"]}
    assert found["max_diff"] <= 1e-5
    assert found["sent"] == [0, 0, 0] and found["stored_equal"]  # 3 chunks, written on the second node
    output = result.stdout + result.stderr
    assert "CUDA was requested but ONNX Runtime runs this session on the CPU" in output
