"""Every command in the README and docs/ is run by a test.

A shell command is a line of a ```bash block in README.md or docs/*.md (continuation lines
joined, comments dropped). Each one is either run here (the README's Python snippets as
written, the benchmarks that no other test runs at toy sizes) or listed in COVERED with the
test that runs it; that listing is checked: the test exists, and its file names the
command's job (and benchmark) and every one of its flags. What no test can run (the AWS
cluster launcher) is listed in NOT_RUN with the reason and the test that checks what can be.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import REPO, call_job

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_commands() -> list[tuple[str, str]]:
    """(document, command) for every line of every ```bash block."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+", " ", re.sub(r"(^|\s)#\s.*$", "", line)).strip()
                if line:
                    found.append((doc.relative_to(REPO).as_posix(), line))
    return found


def python_block(doc: Path, marker: str) -> str:
    """The one ```python block of `doc` that contains `marker`."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", doc.read_text(), re.S) if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks of {doc.name} hold {marker!r}"
    return blocks[0]


# (command pattern, matched from the start; the test that runs it; extra strings its file must hold).
# VIA first: the test calls in-process the function the job calls (checked in jobs/<job>.py) with
# the command's settings, so the file need not spell the job's flags.
VIA = ("<via>",)
Q = r"python3 -m venv \.venv && \.venv/bin/pip install -e \"\.\[cpu,test\]\" && \.venv/bin/python -m "
COVERED: list[tuple[str, str, tuple[str, ...]]] = [
    (Q + r"pytest$", "test_quickstart.py::test_readme_quick_start_is_what_ci_runs", (".ci/run",)),
    (Q + r"jobs\.vectorfind$", "test_generation.py::test_main_job_end_to_end_and_reuse", ()),
    # the session fixture both test_attributes_model.py and test_vocabulary.py use
    (r"python -m jobs\.export --model synthetic-attributes ", "conftest.py::attributes_dir",
     VIA + ('export_model("synthetic-attributes"',)),
    (r"python -m jobs\.vectorfind --bundle bundles/attributes ", "test_vocabulary.py::test_two_properties_one_grouping_score",
     ("smile=-1.5,-0.5,0.5,1.5",)),
    (r"python -m jobs\.export --model stylegan2 ", "test_checkpoint_bundles.py::test_each_format_exports_a_bundle_with_parity", ()),
    (r"python -m jobs\.vectorfind --bundle bundles/ffhq ",
     "test_checkpoint_bundles.py::test_main_job_runs_on_each_format_with_a_layer_range", ()),
    (r"export AWS_ENDPOINT_URL=", "test_object_storage.py::test_main_job_on_s3_reruns_and_resumes_to_the_same_bytes",
     ("AWS_ENDPOINT_URL",)),
    (r"python -m jobs\.(vectorfind --out|report --run) s3://",
     "test_object_storage.py::test_main_job_on_s3_reruns_and_resumes_to_the_same_bytes", ()),
    (r"export RAY_AUTH_MODE=", "test_cluster.py::test_ray_job_submit_runs_the_main_job_on_a_local_cluster",
     ("RAY_AUTH_MODE",)),
    (r"ray start --head ", "test_cluster.py::test_ray_job_submit_runs_the_main_job_on_a_local_cluster", ('"start"',)),
    (r"ray job submit --address http://127\.0\.0\.1:8275 ",
     "test_cluster.py::test_ray_job_submit_runs_the_main_job_on_a_local_cluster", ('"job", "submit"',)),
    (r"(sleep 10; )?pgrep -f /tmp/vfray \| xargs -r kill", "test_cluster.py::test_ray_job_submit_runs_the_main_job_on_a_local_cluster",
     ("os.kill", "signal.SIGTERM, signal.SIGKILL", "cmdline", "temp_dir")),
    (r"python -m jobs\.export --editor ", "test_editor.py::test_export_editor_refusals", ('"--editor"',)),
    (r"python -m jobs\.render --picks picks\.csv --bundle editors/demo --sweep ",
     "test_editor.py::test_render_sweep_labels_frames_and_writes_scores", ()),
    (r"python -m jobs\.render --picks picks\.(csv|json) ", "test_editor.py::test_render_picks_csv_and_json", ()),
    (r"python -m jobs\.render --picks ohlora_z_vectors\.csv ", "test_editor.py::test_render_reference_pair", ()),
    (r"python -m jobs\.benchmark ceiling ", "test_gpu_path.py::test_ceiling_benchmark_prints_its_line", ('"ceiling"',)),
    (r"python -m jobs\.benchmark scale$", "test_benchmark.py::test_scale_benchmark_ends_with_its_line", ('"scale"',)),
    (r"python -m jobs\.benchmark gpu ", "test_gpu_path.py::test_gpu_benchmark_help_and_its_one_line_refusal_without_a_gpu",
     ('"gpu"',)),
    (r"python -m jobs\.benchmark sampling$", "test_benchmark.py::test_sampling_benchmark_prints_its_ratios",
     ("bench_sampling(",)),
    (r"python -m jobs\.benchmark fit$", "test_benchmark.py::test_fit_benchmark_prints_its_comparison", ("bench_fit(",)),
    (r"python -m jobs\.benchmark estimators$", "test_benchmark.py::test_estimators_benchmark_compares_on_shared_cases",
     ("bench_estimators(",)),
    (r"python -m jobs\.benchmark estimators --bundle ", "test_docs.py::test_ray_benchmarks_at_toy_sizes", ()),
    (r"python -m jobs\.benchmark reference$", "test_reference.py::test_reference_benchmark_runs_every_path",
     ('"reference"',)),
    (r"python -m jobs\.benchmark (export|stylegan2)$", "test_docs.py::test_torch_benchmarks_at_toy_sizes", ()),
    (r"python -m jobs\.benchmark (test|grid|editor)$", "test_docs.py::test_ray_benchmarks_at_toy_sizes", ()),
    (r"python -m jobs\.export --model synthetic ", "test_export.py::test_refuses_non_empty_out_unless_overwrite",
     VIA + ('export_model("synthetic", out, overwrite=True)', "ExportOptions(resolution=")),
    (r"python -m jobs\.export --model ohlora ", "test_reference.py::test_export_manifest_parity_and_dynamic_batch",
     ('"ohlora"',)),
    (r"python -m jobs\.(vectorfind \[--out|fit|test|import_vectors|faces) ", "test_docs.py::test_job_synopses_on_a_small_run",
     ()),
    (r"python -m jobs\.sample ", "test_sampling.py::test_resume_after_kill_recomputes_only_missing_chunks", ()),
    (r"python -m jobs\.recheck --run runs/demo ", "test_generation.py::test_outputs_and_recheck", ()),
    (r"python -m jobs\.recheck --run runs/mine ", "test_vocabulary.py::test_two_properties_one_grouping_score",
     ("smile=0,yaw=0",)),
    (r"python -m jobs\.recheck --reference-csv ", "test_generation.py::test_outputs_and_recheck", ()),
    (r"python -m jobs\.report ", "test_reliability.py::test_stored_results_refuse", ()),
    (r"python -m jobs\.grid ", "test_grid.py::test_grid_table_and_markdown", ()),
    (r"python -m jobs\.gallery ", "test_gallery.py::test_gallery_job_top_and_bad_input", ()),
]
# Commands of the Ray cluster launcher on AWS (docs/cluster.md): no test can reach AWS.
# What can be checked, cluster.yaml against Ray's own schema, is.
NOT_RUN = {
    r"ray (up|dashboard|down) cluster\.yaml$": "test_cluster.py::test_cluster_yaml_passes_rays_validation",
    r"ray rsync-down cluster\.yaml ": "test_cluster.py::test_cluster_yaml_passes_rays_validation",
    r"ray job submit --address http://127\.0\.0\.1:8265 --working-dir \. -- python -m jobs\.grid ":
        "test_cluster.py::test_cluster_yaml_passes_rays_validation",
}


def _needles(command: str) -> list[str]:
    """The job and every flag of a command: what the covering test's file must name (a
    benchmark's own name is an extra string of its COVERED entry)."""
    command = command.replace("[", " ").replace("]", " ")
    found = []
    job = re.search(r"-m (jobs\.\w+)", command)
    if job:
        found.append(job.group(1))
    found += sorted(set(re.findall(r"(?<![\w-])--[a-z][\w-]*", command)))
    return found


def _names(text: str, needle: str) -> bool:
    if needle.startswith("jobs."):  # called as a module, or imported and called in-process
        name = needle.removeprefix("jobs.")
        return needle in text or re.search(rf"from jobs import [^\n]*\b{name}\b", text) is not None
    return f'"{needle}"' in text or f'"{needle.lstrip("-")}"' in text  # "--flag" or a "flag" name


def test_every_doc_command_is_run_by_a_test():
    commands = doc_commands()
    assert len(commands) > 30 and any(doc == "README.md" for doc, _ in commands)
    unmatched, wrong = [], []
    for doc, command in commands:
        if any(re.match(p, command) for p in NOT_RUN):
            continue
        entries = [(test, extra) for pattern, test, extra in COVERED if re.match(pattern, command)]
        if not entries:
            unmatched.append(f"{doc}: {command}")
            continue
        test, extra = entries[0]
        path, name = test.split("::")
        text = (REPO / "tests" / path).read_text()
        if extra[:1] == VIA:
            job = re.search(r"-m jobs\.(\w+)", command).group(1)
            calls = [re.match(r"(\w+)\(", e).group(1) for e in extra[1:] if re.match(r"\w+\(", e)]
            missing = [f"jobs/{job}.py calls {c}" for c in calls if f"{c}(" not in (REPO / "jobs" / f"{job}.py").read_text()]
            missing += [e for e in extra[1:] if e not in text]
        else:
            missing = [n for n in _needles(command) if not _names(text, n)] + [e for e in extra if e not in text]
        if f"def {name}(" not in text:
            missing.append(f"def {name}")
        if missing:
            wrong.append(f"{doc}: {command}\n    {test} lacks {missing}")
    assert not unmatched, "commands no test runs:\n" + "\n".join(unmatched)
    assert not wrong, "\n".join(wrong)
    for pattern, test in NOT_RUN.items():
        path, name = test.split("::")
        assert f"def {name}(" in (REPO / "tests" / path).read_text() and "cluster.yaml" in (REPO / "tests" / path).read_text()
        assert any(re.match(pattern, c) for _, c in commands), f"NOT_RUN entry {pattern!r} matches no command"


def test_readme_stays_a_path():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 20000 and "../shared" not in readme
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Quick start"
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).is_file(), link
    for doc in DOCS[1:]:
        for link in re.findall(r"\]\(([\w.]+\.md)", doc.read_text()):
            assert (REPO / "docs" / link).is_file(), f"{doc.name} -> {link}"


def test_readme_checkpoint_helpers_and_scorer_recipe_run_as_written(tmp_path):
    """The two Python blocks of "Bring your own model", as written, then the README's export
    flags on what they wrote: the scorer recipe must export with torch 2.13 and no onnxscript."""
    readme = REPO / "README.md"
    (tmp_path / "tests").symlink_to(REPO / "tests")  # the helpers run from the repository root
    for marker in ("write_random_checkpoints", "torch.onnx.export"):
        script = tmp_path / "snippet.py"
        script.write_text(python_block(readme, marker))
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    for name in ("rosinality.pt", "network-snapshot.pkl", "genforce.pth", "ohlora/generator.pth",
                 "ohlora/property_score_cnn.pth"):
        assert (tmp_path / "checkpoints" / name).stat().st_size > 1000, name
    scorer = ort.InferenceSession(str(tmp_path / "attributes.onnx"), providers=["CPUExecutionProvider"])
    assert scorer.run(None, {"image": np.zeros((3, 3, 224, 224), np.float32)})[0].shape == (3, 3)
    done = call_job("jobs.export", "--model", "stylegan2", "--generator", str(tmp_path / "checkpoints/rosinality.pt"),
                    "--scorer", str(tmp_path / "attributes.onnx"), "--score-names", "smile,age,yaw",
                    "--scorer-size", "224", "--scorer-range", "0,1", "--scorer-mean", "0.485,0.456,0.406",
                    "--scorer-std", "0.229,0.224,0.225", "--median-samples", "16", "--out", str(tmp_path / "bundle"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["score_names"] == ["smile", "age", "yaw"]


PROPS = ("--properties", "eyes,mouth", "--group-by", "hair_color", "--stability-splits", "0")


@pytest.fixture(scope="module")
def two_property_run(ray_session, bundle_dir, tmp_path_factory) -> Path:
    """A small run of the main job with two edited properties (docs/jobs.md's vectorfind synopsis)."""
    run = tmp_path_factory.mktemp("docs") / "run"
    done = call_job("jobs.vectorfind", "--out", str(run), "--n", "1600", "--cases", "8", "--seed", "0",
                    "--bundle", str(bundle_dir), *PROPS)
    assert done.returncode == 0, done.stderr
    return run


def _export_editor(run: Path, out: Path, bundle_dir: Path) -> None:
    done = call_job("jobs.export", "--editor", str(run), "--out", str(out), "--bundle", str(bundle_dir))
    assert done.returncode == 0, done.stderr


def test_readme_deployment_snippet_on_a_two_property_editor(two_property_run, bundle_dir, tmp_path):
    editor = tmp_path / "editor"
    _export_editor(two_property_run, editor, bundle_dir)
    manifest = json.loads((editor / "manifest.json").read_text())
    assert [p["name"] for p in manifest["properties"]] == ["eyes", "mouth"]
    snippet = python_block(REPO / "README.md", 'editor = "editors/demo"')
    script = tmp_path / "deploy.py"
    script.write_text(snippet.replace('editor = "editors/demo"', f"editor = {str(editor)!r}"))
    done = subprocess.run([sys.executable, "-I", str(script)], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in manifest["groups"] and done.stdout.strip().endswith("(1, 3, 64, 64)")


def test_job_synopses_on_a_small_run(two_property_run, bundle_dir, tmp_path):
    """docs/jobs.md's synopses of fit, test, import_vectors and faces, every flag shown, on the small run."""
    run, bundle = str(two_property_run), str(bundle_dir)
    done = call_job("jobs.fit", "--run", run, "--seed", "0", "--space", "w", "--ratio", "0.2", "--medians", "manifest",
                    "--export-csv", str(tmp_path / "csv"), *PROPS)
    assert done.returncode == 0, done.stderr
    done = call_job("jobs.test", "--run", run, "--cases", "8", "--seed", "0", "--cutoffs", "0.92,0.88",
                    "--vectors", str(two_property_run / "vectors.parquet"), "--bundle", bundle)
    assert done.returncode == 0 and "passed" in done.stdout, done.stderr
    done = call_job("jobs.import_vectors", "--csv-dir", str(tmp_path / "csv"), "--out", str(tmp_path / "v.parquet"),
                    "--space", "w", "--bundle", bundle, *PROPS[:4])
    assert done.returncode == 0 and (tmp_path / "v.parquet").is_file(), done.stderr
    done = call_job("jobs.faces", "--bundle", bundle, "--count", "2", "--seed", "0", "--out", str(tmp_path / "f.png"))
    assert done.returncode == 0 and (tmp_path / "f.png").stat().st_size > 1000, done.stderr


def test_torch_benchmarks_at_toy_sizes():
    """`jobs.benchmark export` and `stylegan2` as documented, at toy sizes, in-process (they
    start no Ray; each sets torch's thread count, given back after)."""
    import torch

    threads = torch.get_num_threads()
    try:
        done = call_job("jobs.benchmark.__main__", "export", "--seconds", "0.05", "--batch-size", "4")
        assert done.returncode == 0 and "onnx runtime" in done.stdout, done.stderr[-2000:]
        done = call_job("jobs.benchmark.__main__", "stylegan2", "--resolution", "16", "--images", "2",
                        "--batch-sizes", "1")
        assert done.returncode == 0 and "parity on 2 codes" in done.stdout, done.stderr[-2000:]
    finally:
        torch.set_num_threads(threads)


def test_ray_benchmarks_at_toy_sizes(two_property_run, bundle_dir, tmp_path, monkeypatch):
    """`jobs.benchmark test`, `grid`, `editor` and `estimators --bundle`, at toy sizes, on the session's Ray."""
    monkeypatch.chdir(tmp_path)  # they keep their runs under the working directory
    bundle = str(bundle_dir)
    for args in (("test", "--n", "2000", "--cases", "2", "--reference-cases", "1"),
                 ("grid", "--n", "400", "--ratio", "0.2", "--cases", "2"),
                 ("estimators", "--bundle", bundle, "--n", "1000", "--seeds", "0", "--cases", "2",
                  "--estimators", "ridge", "--out", str(tmp_path / "est"))):
        done = call_job("jobs.benchmark.__main__", *args)
        assert done.returncode == 0 and done.stdout.strip(), (args[0], done.stderr[-2000:])
    _export_editor(two_property_run, tmp_path / "editor", bundle_dir)  # what the editor benchmark does first
    done = call_job("jobs.benchmark.__main__", "editor", "--run", str(two_property_run), "--batch-sizes", "1,2",
                    "--seconds", "0.02")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-2000:]
