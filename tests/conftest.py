"""Shared fixtures: the synthetic world and one exported bundle per test session."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def world():
    from export.world import build_world

    return build_world()


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """The built-in synthetic model exported once, at the default resolution."""
    from export.models import export_model

    out = tmp_path_factory.mktemp("bundle") / "synthetic"
    export_model("synthetic", out)
    return out


@pytest.fixture(scope="session")
def attributes_dir(tmp_path_factory) -> Path:
    """The synthetic-attributes model exported once, at the default resolution, as
    `python -m jobs.export --model synthetic-attributes` does (tests/test_attributes_model.py
    checks the bundle, tests/test_vocabulary.py runs the jobs on it)."""
    from export.models import export_model

    out = tmp_path_factory.mktemp("attributes") / "bundle"
    export_model("synthetic-attributes", out)
    return out


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One real local Ray instance for the whole session, on loopback only. Started after the
    S3 test server, so its workers have the store's AWS variables, as a cluster's processes
    have those of the environment `ray start` ran in: jobs on store runs run in-process."""
    import ray

    from jobs.cli.ray import stay_on_loopback

    stay_on_loopback()
    # Workers' and Ray's own log lines (e.g. a GCS note about an actor already gone) would
    # otherwise reach the captured stderr that tests read as a job's one-line error.
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    from compute.bundle import load_bundle

    return load_bundle(bundle_dir)


def _file_hashes(root: Path) -> dict[str, str]:
    from compute.files import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def finished_run(ray_session, bundle_dir, tmp_path_factory):
    """finished_run(n=..., cases=..., ratio=..., seed=...): a run the main job finished on the
    session's bundle with those settings (the rest the defaults), made once per session for
    every test file that asks for the same settings, and the job's CompletedProcess. Shared:
    read it, or run jobs that refuse before writing; a test that changes a run works on its own
    copy (shutil.copytree). At the session's end each run must still hold the bytes it was made
    with: a test that wrote into one fails there."""
    made: dict[tuple, tuple[Path, subprocess.CompletedProcess, dict]] = {}

    def finished(*, n: int, cases: int, ratio: float | None = None, seed: int = 0):
        key = (n, cases, ratio, seed)
        if key not in made:
            run = tmp_path_factory.mktemp("finished") / "run"
            flags = ["--n", str(n), "--cases", str(cases), "--seed", str(seed)]
            flags += [] if ratio is None else ["--ratio", str(ratio)]
            done = call_job("jobs.vectorfind", "--bundle", str(bundle_dir), "--out", str(run), *flags)
            assert done.returncode == 0, done.stderr[-3000:]
            made[key] = run, done, _file_hashes(run)
        run, done, _ = made[key]
        return run, done

    yield finished
    changed = [str(run) for run, _, before in made.values() if _file_hashes(run) != before]
    assert not changed, f"a test wrote into a shared finished run (copy it first): {changed}"


@pytest.fixture(scope="session")
def samples_8k(ray_session, bundle, tmp_path_factory) -> Path:
    """RUN/samples.parquet of 8,000 samples of the session's bundle (seed 11, two CPU actors),
    drawn once for the files that fit on them (tests/test_fit.py, tests/test_generation.py);
    each copies them into a run directory of its own (copy_samples). Checked unchanged at the
    session's end."""
    from compute.resources import Resources
    from compute.sampling import sample_table

    run = tmp_path_factory.mktemp("samples8k")
    sample_table(bundle, 8000, 11, run, resources=Resources(2, 0.5, 0.0, 1), progress=False)
    before = _file_hashes(run)
    yield run / "samples.parquet"
    assert _file_hashes(run) == before, f"a test wrote into the shared samples in {run} (copy them first)"


def copy_samples(samples: Path, run: Path) -> Path:
    """A run directory RUN holding a copy of `samples` (a samples.parquet file or dataset directory)."""
    import shutil

    run.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if samples.is_dir() else shutil.copy2)(samples, run / samples.name)
    return run


def run_job(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 600):
    """Run `python -m <args>` as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def call_job(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m jobs.<name> args` in this process, as run_main runs it: the exit status,
    stdout and stderr a user would see, without a new interpreter's start-up (several
    seconds each). For jobs that fail before Ray starts or use the session's Ray."""
    import contextlib
    import importlib

    from jobs.cli import run_main

    module = importlib.import_module(f"jobs.{name.removeprefix('jobs.')}")
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(JobOnly(out, sys.stdout)), contextlib.redirect_stderr(JobOnly(err, sys.stderr)):
        try:
            run_main(module.main, list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


class JobOnly(io.TextIOBase):
    """What call_job captures: the job's own writes. Ray's driver threads write at any time:
    its error listener (the GCS's errors, e.g. about an earlier test's actor) and, on an
    instance that forwards logs, its log printer. A job run as a user runs it shows no such
    lines of a Ray it did not start, so those threads keep writing where they wrote before."""

    RAY_FORWARDERS = ("ray_print_logs", "ray_listen_error_messages")

    def __init__(self, captured, passthrough):
        super().__init__()
        self.captured, self.passthrough = captured, passthrough

    def write(self, text: str) -> int:
        ray_thread = threading.current_thread().name in self.RAY_FORWARDERS
        return (self.passthrough if ray_thread else self.captured).write(text)

    def flush(self) -> None:
        self.passthrough.flush()


class Capped:
    """A session whose calls the memory cap limits to 5 images, counting its calls."""

    def __init__(self, session):
        from compute.sessions import ACTIVATION_BYTES

        self.session, self.calls = session, []
        self.largest_activation = ACTIVATION_BYTES["cpu"] // 5

    def run(self, names, feeds):
        self.calls.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)

    def __getattr__(self, name):  # get_inputs, get_outputs, get_providers
        return getattr(self.session, name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 for the session, with
    one bucket; yields the environment a job needs to reach it, as a user sets it: the
    standard AWS variables, AWS_ENDPOINT_URL among them."""
    import socket
    import time
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():  # in-process callers (call_job, pyarrow) reach it too
            patch.setenv(name, value)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError(f"the S3 test server did not start: {log.read_text()[-2000:]}") from None
                    time.sleep(0.2)
            fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
            fs.create_dir("vectorfind-test")
            yield SimpleNamespace(bucket="vectorfind-test", fs=fs, env=env)
        finally:
            server.terminate()
            server.wait(timeout=30)
