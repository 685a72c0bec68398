"""The README's first command until the main job exists: faces from the built-in model."""
from __future__ import annotations

from conftest import run_job


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
    result = run_job("jobs.faces", "--count", "0", "--out", str(tmp_path / "f.png"))
    assert result.returncode == 2 and "--count" in result.stderr
