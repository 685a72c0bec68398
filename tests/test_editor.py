"""The editor (python -m jobs.export --editor RUN) and rendering picked faces (jobs.render).

The editor must reproduce the test stage: its images equal the project's own edit code
(apply_edits, layer_codes, the bundle's graphs), its scores give the correlations the test
stored, and the groups it finds are the stored ones. It must run in plain onnxruntime,
at any batch size, and render the gallery's picks and the reference's z vectors.
"""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import Capped, call_job

TOLERANCE = 1e-4


def _make_test(bundle_dir, run: Path, source: Path, *flags: str) -> Path:
    """A run tested on the small run's samples (and vectors, unless it fits its own)."""
    run.mkdir()
    shutil.copytree(source / "samples.parquet", run / "samples.parquet")
    if "--space" in flags and flags[flags.index("--space") + 1] == "z":
        done = call_job("jobs.fit", "--run", str(run), "--space", "z")
        assert done.returncode == 0, done.stderr
    else:
        shutil.copy(source / "vectors.parquet", run)
    done = call_job("jobs.test", "--run", str(run), "--cases", "6", "--bundle", str(bundle_dir), *flags)
    assert done.returncode == 0, done.stderr
    return run


@pytest.fixture(scope="module")
def runs(bundle_dir, finished_run, tmp_path_factory) -> dict[str, Path]:
    """A small v7 run made by the main job, and from its samples a v6 (z) run and a layer-range run."""
    root = tmp_path_factory.mktemp("editor")
    w, _ = finished_run(n=3000, cases=12)  # the session's, shared with tests/test_gallery.py: read only
    return {"w": w, "z": _make_test(bundle_dir, root / "z", w, "--space", "z"),
            "w:0-3": _make_test(bundle_dir, root / "layers", w, "--space", "w:0-3")}


@pytest.fixture(scope="module")
def editors(runs, bundle_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("editors")
    done = call_job("jobs.export", "--editor", str(runs["w"]), "--out", str(root / "w"), "--bundle", str(bundle_dir))
    assert done.returncode == 0, done.stderr
    assert "parity vs the test stage on 8 cases" in done.stdout and "hhh hhl hlh" in done.stdout
    from compute.editor import export_editor

    for space in ("z", "w:0-3"):
        export_editor(runs[space], root / space, bundle_dir)
    return {space: root / space for space in runs}


def _cases(run: Path):
    from vectors.method import Method
    from compute.tables import read_metadata, vector_matrix

    table = pq.read_table(run / "cases.parquet")
    method = Method.from_dict(read_metadata(run / "cases.parquet")["test"]["method"])
    return table, method, vector_matrix(table[method.latent])


def _editor_run(editor_dir: Path, codes, weights, groups, fp16: bool = False):
    from compute.editor import load_editor

    editor = load_editor(editor_dir)
    return editor.run(editor.session(fp16=fp16), codes, weights, np.asarray(groups, np.int64))


def _project_images(bundle, run: Path, rows, weights) -> np.ndarray:
    """The test stage's edits of cases `rows`, drawn the project's way: (rows x weights, 3, R, R)."""
    from compute.sessions import make_session, run_single
    from compute.vectors_table import read_vectors
    from vectors.edits import apply_edits, case_directions, direction_matrices, layer_codes
    from compute.tables import vector_matrix

    table, method, latents = _cases(run)
    _, directions, _ = read_vectors(run / "vectors.parquet")
    matrices = direction_matrices(directions, method.property_names)
    edited = apply_edits(latents[rows], case_directions(matrices, table["group"].to_numpy()[rows]), weights)
    if method.layers is not None:
        edited = layer_codes(vector_matrix(table["w"])[rows], edited, method.layers, bundle.num_ws)
    edited = edited.reshape(-1, *edited.shape[2:])
    if method.latent == "z":
        edited = run_single(make_session(bundle.graph_bytes("mapping")), edited)
    return run_single(make_session(bundle.graph_bytes("synthesis")), edited)


@pytest.mark.parametrize("space", ["w", "z", "w:0-3"])
def test_editor_images_are_the_test_stages(runs, editors, bundle, space):
    """Editor images (group found in the graph) vs the project's edit code on every case of
    the run, at four of the test's weight vectors; the groups found are the stored ones."""
    manifest = json.loads((editors[space] / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["image_max_abs_diff"] <= TOLERANCE and parity["groups_found"] == parity["groups_stored"]
    assert manifest["space"] == space and manifest["source_bundle"]["manifest_sha256"] == bundle.manifest_sha256
    table, method, latents = _cases(runs[space])
    weights = method.edit_weights()[[0, 17, 33, 49]]
    rows = np.arange(table.num_rows)
    want = _project_images(bundle, runs[space], rows, weights)
    image, _, used = _editor_run(editors[space], np.repeat(latents, 4, axis=0), np.tile(weights, (len(rows), 1)),
                                 np.full(len(rows) * 4, -1))
    assert np.abs(image - want).max() <= TOLERANCE
    found = [manifest["groups"][i] for i in used[::4]]
    assert found == table["group"].to_pylist()
    assert manifest["groups"] == list(method.group_names)
    assert [p["name"] for p in manifest["properties"]] == list(method.property_names)
    assert manifest["code_dim"] == latents.shape[1]


def test_editor_scores_give_the_stored_correlations(runs, editors, bundle):
    """All 50 edits of every case through the editor: the correlations the test stored."""
    from vectors.stats import case_statistics

    table, method, latents = _cases(runs["w"])
    weights = method.edit_weights()
    _, scores, _ = _editor_run(editors["w"], np.repeat(latents, len(weights), axis=0),
                               np.tile(weights, (len(latents), 1)), np.full(len(latents) * len(weights), -1))
    stats = case_statistics(method, scores.reshape(len(latents), len(weights), -1), bundle.score_names)
    for p in method.property_names:
        np.testing.assert_allclose(stats[f"corr_{p}"], table[f"corr_{p}"].to_numpy(), atol=1e-5)


def test_layer_range_moves_only_its_layers(runs, editors):
    """The w:0-3 editor is not the w editor: same code and weights, other images; at weight 0 the same."""
    table, method, latents = _cases(runs["w"])
    weights = np.array([[1.2, 0, 0], [0, 0, 0]], np.float32)   # eyes: read from layers 4-6
    codes, groups = np.repeat(latents[:2], 2, axis=0), np.full(4, -1)
    whole, _, _ = _editor_run(editors["w"], codes, np.tile(weights, (2, 1)), groups)
    layered, _, _ = _editor_run(editors["w:0-3"], codes, np.tile(weights, (2, 1)), groups)
    assert np.abs(whole[0::2] - layered[0::2]).max() > 0.05
    assert np.abs(whole[1::2] - layered[1::2]).max() == 0


def test_dynamic_batch_and_given_groups(runs, editors):
    """Batch 1 and 5, with -1 and given groups mixed: the rows of one batch of all of them."""
    table, method, latents = _cases(runs["w"])
    names = list(method.group_names)
    stored = np.array([names.index(g) for g in table["group"].to_pylist()[:5]])
    other = (stored + 1) % len(names)
    groups = np.array([-1, stored[1], other[2], -1, other[4]])
    weights = np.array([[1.2, -0.9, 0.6]] * 5, np.float32)
    image, scores, used = _editor_run(editors["w"], latents[:5], weights, groups)
    assert used.tolist() == [stored[0], stored[1], other[2], stored[3], other[4]]
    for i in range(5):
        one, one_scores, one_used = _editor_run(editors["w"], latents[i:i + 1], weights[i:i + 1], groups[i:i + 1])
        assert one.shape == (1, 3, 64, 64) and one_used[0] == used[i]
        assert np.abs(one[0] - image[i]).max() <= 1e-5 and np.abs(one_scores[0] - scores[i]).max() <= 1e-5
    # in calls capped at 5 images (as for a large generator), the same rows
    from compute.editor import load_editor

    editor = load_editor(editors["w"])
    capped = Capped(editor.session())
    many = np.repeat(latents[:5], 3, axis=0), np.repeat(weights, 3, axis=0), np.repeat(groups, 3)
    parts = editor.run(capped, *many)
    assert capped.calls == [5, 5, 5] and np.array_equal(parts[2], np.repeat(used, 3))
    assert np.abs(parts[0] - np.repeat(image, 3, axis=0)).max() <= 1e-5
    # another group means other directions: the picture changes
    assert np.abs(image[2] - _editor_run(editors["w"], latents[2:3], weights[:1], stored[2:3])[0][0]).max() > 1e-3


def test_fp16_variant_takes_and_gives_fp32(runs, editors):
    import onnxruntime as ort

    session = ort.InferenceSession(str(editors["w"] / "editor_fp16.onnx"), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", "tensor(float)", "tensor(int64)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)", "tensor(float)", "tensor(int64)"]
    _, method, latents = _cases(runs["w"])
    weights = np.tile(method.edit_weights()[[0, 49]], (3, 1))
    codes, groups = np.repeat(latents[:3], 2, axis=0), np.full(6, -1)
    half, half_scores, _ = _editor_run(editors["w"], codes, weights, groups, fp16=True)
    full, full_scores, _ = _editor_run(editors["w"], codes, weights, groups)
    # The world draws from maps of at most 64x64 values, which compute.fp16 keeps in float32
    # (SMALL_VALUES): its images are exact; the scorer's convolutions run in fp16.
    assert half.dtype == np.float32 and np.abs(half - full).max() < 0.05
    assert half_scores.dtype == np.float32 and 0 < np.abs(half_scores - full_scores).max() < 0.05
    # The manifest's fp16 figures emulate a GPU's rounding (compute.fp16_check), in the If
    # branch that finds the groups too: images exact here, scores moved, groups kept.
    for editor in editors.values():
        parity = json.loads((editor / "manifest.json").read_text())["parity"]
        assert parity["fp16_image_max_abs_diff"] == 0 and 0 < parity["fp16_scores_max_abs_diff"] < 0.05
        assert parity["fp16_groups_equal"] == len(parity["case_ids"])


PLAIN = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
data = np.load(sys.argv[2])
image, scores, group = s.run(None, {"code": data["code"], "weights": data["weights"], "group": data["group"]})
np.savez(sys.argv[3], image=image, scores=scores, group=group)
extra = sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("compute", "vectors", "jobs", "export", "torch", "onnx"))
print("modules:", ",".join(sorted(set(extra))))
"""


def test_editor_runs_in_plain_onnxruntime(runs, editors, tmp_path):
    _, method, latents = _cases(runs["w"])
    inputs = {"code": latents[:3], "weights": method.edit_weights()[[0, 20, 49]], "group": np.array([-1, 0, -1])}
    np.savez(tmp_path / "in.npz", **inputs)
    done = subprocess.run([sys.executable, "-I", "-c", PLAIN, str(editors["w"] / "editor.onnx"),
                           str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "modules:"
    got = np.load(tmp_path / "out.npz")
    want = _editor_run(editors["w"], *inputs.values())
    for name, value in zip(("image", "scores", "group"), want):
        np.testing.assert_array_equal(got[name], value)


def test_readme_example_runs_on_an_editor(editors, tmp_path):
    """The README's ten-line example, verbatim but for the editor's path, in plain onnxruntime."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Deploying"):]
    example = section[section.index("```python\n") + 10:]
    example = example[:example.index("```")]
    assert len(example.strip().splitlines()) <= 12 and 'editor = "editors/demo"' in example
    script = tmp_path / "example.py"
    script.write_text(example.replace('editor = "editors/demo"', f'editor = {str(editors["w"])!r}'))
    done = subprocess.run([sys.executable, "-I", str(script)], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    group, *_, shape = done.stdout.split()
    assert group in json.loads((editors["w"] / "manifest.json").read_text())["groups"]
    assert done.stdout.strip().endswith("(1, 3, 64, 64)")


# ---- rendering picks -----------------------------------------------------------------


def _write_picks(run: Path, out: Path, ids, sha: str, how: str = "csv") -> Path:
    """Picks from the run's own cases, in the gallery's picks.csv (exact float32 reprs), or
    in the layouts it wrote before: "old_csv" (columns z0.. whatever the code, 16 hex digits
    of the bundle) and "json"."""
    table, method, latents = _cases(run)
    groups = table["group"].to_pylist()
    if how == "json":
        data = {"format": "vectorfind-picks", "version": 1, "bundle_manifest_sha256": sha, "space": method.space,
                "run": str(run), "picks": [{"case_id": i, "group": groups[i], "code": [float(x) for x in latents[i]]}
                                           for i in ids]}
        out.write_text(json.dumps(data))
        return out
    if how == "old_csv":
        lines = [",".join(["case_id", "group", "bundle"] + [f"z{d}" for d in range(latents.shape[1])])]
        lines += [",".join([str(i), groups[i], sha[:16]] + [repr(float(x)) for x in latents[i]]) for i in ids]
        out.write_text("\n".join(lines) + "\n")
        return out
    from compute.picks import picks_lines

    header, rows = picks_lines(method.latent, sha, ids, [groups[i] for i in ids], latents[ids])
    out.write_text("\n".join([header] + [rows[i] for i in ids]) + "\n")
    return out


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _expected(editor_dir, codes, weights, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The editor's pixels by the 8-bit rule, its scores and groups, for rows as jobs.render batches them."""
    from compute.plots import to_rgb

    image, scores, used = _editor_run(editor_dir, codes, np.asarray(weights, np.float32), groups)
    return np.stack([to_rgb(i) for i in image]), scores, used


def test_render_picks_csv_and_json(runs, editors, bundle, tmp_path):
    """picks.csv, and the gallery's older picks.csv and picks.json, render the same PNG files,
    whose pixels are the editor's image by the 8-bit rule, exactly."""
    table, method, latents = _cases(runs["w"])
    ids = [1, 4, 7]
    assert method.latent == "w"
    for how, name in (("csv", "picks.csv"), ("old_csv", "old.csv"), ("json", "picks.json")):
        picks = _write_picks(runs["w"], tmp_path / name, ids, bundle.manifest_sha256, how)
        done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]),
                        "--set", "eyes=0.8,mouth=-0.5,pose=0", "--out", str(tmp_path / how))
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert sorted(p.name for p in (tmp_path / how).iterdir()) == sorted(f"case_{i}.png" for i in ids)
    assert (tmp_path / "picks.csv").read_text().startswith("case_id,group,bundle_sha256,w0,w1,")
    groups = [method.group_names.index(table["group"][i].as_py()) for i in ids]
    want, _, _ = _expected(editors["w"], latents[ids], [[0.8, -0.5, 0]] * 3, groups)
    for k, i in enumerate(ids):
        assert np.array_equal(_png(tmp_path / "csv" / f"case_{i}.png"), want[k])  # 0 of 255 apart
        for how in ("old_csv", "json"):
            assert (tmp_path / how / f"case_{i}.png").read_bytes() == (tmp_path / "csv" / f"case_{i}.png").read_bytes()


def test_render_sweep_labels_frames_and_writes_scores(runs, editors, bundle, tmp_path):
    """--sweep: a strip per face whose frames are the editor's images over the tested range,
    each labelled below it, and sweep_pose.csv with every frame's weights and the scores the
    bundle's scorer gives its image."""
    table, method, latents = _cases(runs["w"])
    ids = [1, 4]
    picks = _write_picks(runs["w"], tmp_path / "picks.csv", ids, bundle.manifest_sha256)
    out = tmp_path / "sweep"
    done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]), "--sweep", "pose",
                    "--steps", "7", "--set", "eyes=-1.2", "--out", str(out))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "weights and scores in sweep_pose.csv" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["case_1_pose.png", "case_4_pose.png", "sweep_pose.csv"]
    frames = np.array([[-1.2, 0, v] for v in np.linspace(-0.6, 1.8, 7)], np.float32)
    groups = np.repeat([method.group_names.index(table["group"][i].as_py()) for i in ids], 7)
    want, scores, used = _expected(editors["w"], np.repeat(latents[ids], 7, axis=0), np.tile(frames, (2, 1)), groups)
    for k, i in enumerate(ids):
        strip = _png(out / f"case_{i}_pose.png")
        assert strip.shape[0] > 64 + 10 and strip.shape[1:] == (7 * 64 + 6 * 2, 3)  # a label band below
        for f in range(7):
            assert np.array_equal(strip[:64, f * 66:f * 66 + 64], want[7 * k + f])
            label = strip[64:, f * 66:f * 66 + 64]
            assert (label < 128).any() and (label == 255).mean() > 0.5   # dark text on white
        assert (strip[:, 64:66] == 255).all()                            # the gap between frames
    assert np.abs(want[0].astype(int) - want[6]).max() > 25              # the sweep moves the face
    # the two labels' text differs: each frame names its own pose weight
    assert not np.array_equal(_png(out / "case_1_pose.png")[64:, :64], _png(out / "case_1_pose.png")[64:, 66:130])

    rows = list(csv.reader(io.StringIO((out / "sweep_pose.csv").read_text())))
    score_names = bundle.score_names
    assert rows[0] == (["file", "case_id", "frame", "group", "weight_eyes", "weight_mouth", "weight_pose"]
                       + [f"score_{s}" for s in score_names])
    assert [(r[0], int(r[1]), int(r[2])) for r in rows[1:]] == [
        (f"case_{i}_pose.png", i, f) for i in ids for f in range(7)]
    assert [r[3] for r in rows[1:]] == [method.group_names[g] for g in used]
    values = np.array([r[4:] for r in rows[1:]], np.float32)
    assert np.array_equal(values[:, :3], np.tile(frames, (2, 1))) and np.array_equal(values[:, 3:], scores)
    pose = score_names.index("pose")
    assert np.corrcoef(values[:7, 2], values[:7, 3 + pose])[0, 1] > 0.9  # the measured pose follows the weight


def test_one_8bit_rule_is_the_documented_one():
    """compute.plots.to_rgb is the expression docs/jobs.md states, on every float32 in a
    fine grid over [-1.1, 1.1] and at exact halves: rounded half to even, not truncated."""
    from compute.plots import to_rgb

    docs = (Path(__file__).resolve().parents[1] / "docs" / "jobs.md").read_text()
    [rule] = set(re.findall(r"`(np\.clip\(np\.rint\(\(image \+ 1\) \* 127\.5\), 0, 255\)\.astype\(np\.uint8\))`",
                            docs))
    grid = np.linspace(-1.1, 1.1, 3 * 1000 * 601, dtype=np.float32).reshape(3, 1000, 601)
    k = np.arange(255)
    halves = (k + 0.5).astype(np.float32) / np.float32(127.5) - 1
    exact = (halves + 1) * np.float32(127.5) == k + 0.5          # (x + 1) * 127.5 = k + 0.5 exactly, in float32
    halves, k = halves[exact], k[exact]
    assert len(k) > 100
    for image in (grid, np.stack([halves] * 3)[:, None, :]):
        want = eval(rule, {"np": np, "image": image}).transpose(1, 2, 0)
        assert np.array_equal(to_rgb(image), want)
    got = to_rgb(np.stack([halves] * 3)[:, None, :])[0, :, 0]
    assert np.array_equal(got, k + k % 2)                           # half to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    edges = np.array([-1, 1, -3, 3, np.nan, np.inf, -np.inf], np.float32).reshape(1, 1, -1).repeat(3, axis=0)
    assert to_rgb(edges)[0, :, 0].tolist() == [0, 255, 0, 255, 0, 255, 0]


def test_render_reference_pair(runs, editors, tmp_path):
    """The reference's z-vectors and group-names CSVs (pandas layout) through the z editor;
    without the groups file the editor finds the same groups. A w editor refuses z codes."""
    table, _, z = _cases(runs["z"])
    rows = [0, 3]
    vectors = tmp_path / "ohlora_z_vectors.csv"
    vectors.write_text("," + ",".join(map(str, range(z.shape[1]))) + "\n"
                       + "".join(f"{k}," + ",".join(repr(float(x)) for x in z[i]) + "\n" for k, i in enumerate(rows)))
    names = tmp_path / "ohlora_z_group_names.csv"
    names.write_text(",0\n" + "".join(f"{k},{table['group'][i].as_py()}\n" for k, i in enumerate(rows)))
    with_groups = call_job("jobs.render", "--picks", str(vectors), "--groups", str(names), "--bundle",
                           str(editors["z"]), "--set", "pose=1.2", "--out", str(tmp_path / "a"))
    found = call_job("jobs.render", "--picks", str(vectors), "--bundle", str(editors["z"]), "--set", "pose=1.2",
                     "--out", str(tmp_path / "b"))
    assert with_groups.returncode == 0 and found.returncode == 0, with_groups.stderr + found.stderr
    for k in range(2):
        assert (tmp_path / "a" / f"case_{k}.png").read_bytes() == (tmp_path / "b" / f"case_{k}.png").read_bytes()
    want, _, _ = _expected(editors["z"], z[rows], [[0, 0, 1.2]] * 2, [-1, -1])
    assert np.array_equal(_png(tmp_path / "a" / "case_1.png"), want[1])
    refused = call_job("jobs.render", "--picks", str(vectors), "--bundle", str(editors["w"]), "--out",
                       str(tmp_path / "c"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "515-dim z codes" in refused.stderr and not (tmp_path / "c").exists()


def test_render_refuses_bad_picks_and_warns_on_foreign_cases(runs, editors, bundle, tmp_path):
    good = _write_picks(runs["w"], tmp_path / "picks.csv", [2, 5], bundle.manifest_sha256)
    text = good.read_text().splitlines()

    def variant(name: str, lines) -> Path:
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return tmp_path / name

    not_in_run = variant("999.csv", [text[0], "999" + text[1][text[1].index(","):]])
    other_bundle = variant("other.csv", [text[0], text[1].replace(bundle.manifest_sha256, "0123456789abcdef" * 4)])
    not_a_hash = variant("hash.csv", [text[0], text[1].replace(bundle.manifest_sha256, bundle.manifest_sha256[:16])])
    z_codes = variant("z.csv", [text[0].replace(",w", ",z"), text[1]])  # the editor edits w codes
    moved = text[1].split(",")
    moved[5] = repr(float(moved[5]) + 0.25)
    other_code = variant("code.csv", [text[0], ",".join(moved)])
    short = variant("short.csv", [",".join(text[0].split(",")[:-1]), ",".join(text[1].split(",")[:-1])])
    bad_group = variant("group.csv", [text[0], text[1].replace(text[1].split(",")[1], "hxh", 1)])
    cases = [((other_bundle,), "0123456789abcdef"), ((not_a_hash,), "64 hex digits"),
             ((z_codes,), "holds z codes, this editor edits w codes"), ((short,), "511-dim"), ((bad_group,), "hxh"), ((good, "--set", "smile=1"), "smile"),
             ((good, "--set", "eyes=x"), "NAME=NUMBER"), ((good, "--sweep", "age"), "age")]
    for (picks, *flags), words in cases:
        out = tmp_path / f"out_{picks.stem}_{len(flags)}"
        done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]), "--out", str(out), *flags)
        assert done.returncode == 2, (picks.name, flags, done.stdout)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and words in done.stderr
        assert not out.exists()
    # Faces the run cannot vouch for still render from their own codes, with a warning each.
    for picks, words in ((not_in_run, "999"), (other_code, "differ")):
        out = tmp_path / f"warned_{picks.stem}"
        done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]), "--out", str(out))
        assert done.returncode == 0 and done.stderr.startswith("warning: ") and words in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and len(list(out.glob("*.png"))) == 1


def test_render_warns_out_of_range_and_on_a_missing_run(runs, editors, bundle, tmp_path):
    picks = _write_picks(runs["w"], tmp_path / "picks.csv", [2], bundle.manifest_sha256)
    done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]),
                    "--set", "eyes=2.5,mouth=-3,pose=1", "--out", str(tmp_path / "far"))
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines)
    assert "eyes=2.5" in lines[0] and "[-1.2, 1.2]" in lines[0] and "mouth=-3" in lines[1]
    assert _png(tmp_path / "far" / "case_2.png").shape == (64, 64, 3)

    moved = tmp_path / "editor"
    shutil.copytree(editors["w"], moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["cases_file"] = str(tmp_path / "gone" / "cases.parquet")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(moved), "--out", str(tmp_path / "gone_run"))
    assert done.returncode == 0 and "is gone" in done.stderr and done.stderr.count("\n") == 1
    assert (tmp_path / "gone_run" / "case_2.png").is_file()


def test_export_editor_refusals(runs, editors, bundle_dir, tmp_path):
    untested = tmp_path / "untested"
    untested.mkdir()
    shutil.copytree(runs["w"] / "samples.parquet", untested / "samples.parquet")
    other = tmp_path / "other_bundle"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["note"] = "another export"
    (other / "manifest.json").write_text(json.dumps(manifest))
    cases = [(("--editor", str(untested), "--bundle", str(bundle_dir)), "tested run"),
             (("--editor", str(runs["w"]), "--bundle", str(other)), "--bundle"),
             (("--editor", str(runs["w"]), "--bundle", str(bundle_dir), "--model", "synthetic"), "--model"),
             (("--editor", str(runs["w"]), "--bundle", str(bundle_dir), "--out", str(editors["w"])), "not empty"),
             (("--editor", str(runs["w"]), "--bundle", str(bundle_dir), "--out", str(runs["w"]), "--overwrite"),
              "the run")]
    for args, words in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "editor")]
        done = call_job("jobs.export", *args, *out)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, (args, done.stderr)
    assert not (tmp_path / "editor").exists() and (runs["w"] / "cases.parquet").is_file()


def test_export_editor_and_render_take_locations_in_an_object_store(runs, editors, bundle, bundle_dir, tmp_path,
                                                                    s3_server):
    """`jobs.export --editor s3://...` on a run in the store gives the editor of the same run on
    disk; `jobs.render --picks s3://...` renders what the local picks file renders."""
    s3 = s3_server
    for path in runs["w"].rglob("*"):  # the run as a store holds it (its samples are not read)
        if path.is_file() and "samples.parquet" not in path.parts:
            with s3.fs.open_output_stream(f"{s3.bucket}/editor-run/{path.relative_to(runs['w']).as_posix()}") as f:
                f.write(path.read_bytes())
    done = call_job("jobs.export", "--editor", f"s3://{s3.bucket}/editor-run", "--out", str(tmp_path / "editor"),
                    "--bundle", str(bundle_dir))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "editor" / "editor.onnx").read_bytes() == (editors["w"] / "editor.onnx").read_bytes()

    picks = _write_picks(runs["w"], tmp_path / "picks.csv", [2, 5], bundle.manifest_sha256)
    with s3.fs.open_output_stream(f"{s3.bucket}/picks/picks.csv") as f:
        f.write(picks.read_bytes())
    for where, source in (("local", str(picks)), ("store", f"s3://{s3.bucket}/picks/picks.csv")):
        done = call_job("jobs.render", "--picks", source, "--bundle", str(editors["w"]), "--set", "eyes=0.5",
                        "--out", str(tmp_path / where))
        assert done.returncode == 0 and done.stderr == "", done.stderr
    for name in ("case_2.png", "case_5.png"):
        assert (tmp_path / "store" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    # and writes its images (a sweep's table too) into the store
    for out in (str(tmp_path / "sweep"), f"s3://{s3.bucket}/renders/sweep"):
        done = call_job("jobs.render", "--picks", str(picks), "--bundle", str(editors["w"]), "--sweep", "eyes",
                        "--steps", "3", "--out", out)
        assert done.returncode == 0 and done.stderr == "", done.stderr
    local = sorted(p.name for p in (tmp_path / "sweep").iterdir())
    assert local == ["case_2_eyes.png", "case_5_eyes.png", "sweep_eyes.csv"], local
    for name in local:
        with s3.fs.open_input_stream(f"{s3.bucket}/renders/sweep/{name}") as f:
            assert f.read() == (tmp_path / "sweep" / name).read_bytes(), name
    # an editor exported into the store, and rendered from there, is the same editor
    up = call_job("jobs.export", "--editor", f"s3://{s3.bucket}/editor-run", "--out", f"s3://{s3.bucket}/editors/w",
                  "--bundle", str(bundle_dir))
    assert up.returncode == 0, up.stderr
    stored = _objects(s3, "editors/w")
    assert sorted(stored) == ["editor.onnx", "editor_fp16.onnx", "manifest.json"]
    assert stored["editor.onnx"] == (editors["w"] / "editor.onnx").read_bytes()
    again = call_job("jobs.export", "--editor", f"s3://{s3.bucket}/editor-run", "--out", f"s3://{s3.bucket}/editors/w",
                     "--bundle", str(bundle_dir))
    assert again.returncode == 2 and "pass --overwrite" in again.stderr, again.stderr
    done = call_job("jobs.render", "--picks", str(picks), "--bundle", f"s3://{s3.bucket}/editors/w", "--set",
                    "eyes=0.5", "--out", str(tmp_path / "from-stored-editor"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    for name in ("case_2.png", "case_5.png"):
        assert (tmp_path / "from-stored-editor" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    missing = call_job("jobs.render", "--picks", f"s3://{s3.bucket}/picks/none.csv", "--bundle", str(editors["w"]),
                       "--out", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no file s3://" in missing.stderr, missing.stderr


def _objects(s3, prefix: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    infos = s3.fs.get_file_info(pafs.FileSelector(f"{s3.bucket}/{prefix}", recursive=False))
    out = {}
    for info in infos:
        with s3.fs.open_input_stream(info.path) as f:
            out[info.base_name] = f.read()
    return out
