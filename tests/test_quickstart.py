"""The README's Quick start: its two commands are CI's; faces from the built-in model."""
from __future__ import annotations

import re

from conftest import REPO, call_job, run_job

INSTALL = 'python3 -m venv .venv && .venv/bin/pip install -e ".[cpu,test]" && .venv/bin/python -m '


def test_faces_job_writes_a_png_grid(tmp_path, bundle_dir):
    out = tmp_path / "faces.png"
    result = run_job("jobs.faces", "--bundle", str(bundle_dir), "--count", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_faces_job_exports_the_builtin_model_into_the_cache(tmp_path):
    env = {"VECTORFIND_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "faces.png"
    result = run_job("jobs.faces", "--count", "2", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    bundles = list((tmp_path / "cache" / "bundles").iterdir())
    assert len(bundles) == 1 and (bundles[0] / "manifest.json").is_file()
    again = run_job("jobs.faces", "--count", "2", "--out", str(out), env=env)
    assert "exporting" not in again.stdout  # reused, not re-exported


def test_faces_job_bad_count(tmp_path):
    result = call_job("jobs.faces", "--count", "0", "--out", str(tmp_path / "f.png"))
    assert result.returncode == 2 and "--count" in result.stderr


def test_readme_quick_start_is_what_ci_runs():
    """The Quick start's two commands, exactly: the main job on the built-in model, and the
    tests, which .ci/run runs on a fresh machine (keep the two in step)."""
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    quick = quick[:quick.index("\n## ", 1)]
    assert re.findall(r"```bash\n(.*?)\n```", quick, re.S) == [INSTALL + "jobs.vectorfind", INSTALL + "pytest"]
    assert INSTALL + "pytest" in (REPO / ".ci/run").read_text().splitlines()
