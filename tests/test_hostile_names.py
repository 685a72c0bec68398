"""Hostile names and paths (issue 22, items 1, 3 and 4): score names that would become file
names or table columns outside the rules, bundle entries that leave the bundle, and ONNX
external data that ONNX Runtime would read from the working directory.

Every case runs a job as a user would, on real files (a copy of the session's exported
bundle, edited; ONNX graphs built here), and checks that it ends with exit status 2 and one
`error: ...` line naming the problem, no traceback, and that no file outside the run or
export directory was touched: victim files keep their sha256 and mtime, and no file appears
anywhere else under the test's directory (or in the working directory).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compute.bundle import BundleError, external_data_tensors, load_bundle
from conftest import call_job
from export.onnx_bundle import ExportError, to_onnx_bytes, write_bundle
from export.onnx_user import user_bundle
from export.rosinality import write_random_rosinality_checkpoint
from export.scorer_adapter import ScorerAdapter
from export.stylegan2 import StyleGAN2Config
from vectors.interop import boundary_name, reference_csv_name
from vectors.names import NameRefused, check_score_names, file_name

Z_DIM, W_DIM, RESOLUTION = 8, 16, 16


class Mapping(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(Z_DIM, 16), nn.LeakyReLU(0.2), nn.Linear(16, W_DIM))

    def forward(self, z):
        return self.net(z)


class Synthesis(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.to_pixels = nn.Linear(W_DIM, 3 * RESOLUTION * RESOLUTION)

    def forward(self, w):
        return torch.tanh(self.to_pixels(w)).reshape(-1, 3, RESOLUTION, RESOLUTION)


class Scorer(nn.Module):
    """Any image size -> 3 scores (it pools), so it fits the tiny generators of both routes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.head = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.head(torch.relu(self.conv(x)).mean((2, 3))))


# ---- the victims' side: what must stay untouched ------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under `root` (links as links: their target string)."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files[str(path)] = ("link:" + os.readlink(path), path.lstat().st_mtime_ns)
        elif path.is_file():
            files[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return files


class Scene:
    """A test's directory: `outside` holds victim files and is the working directory (where
    ONNX Runtime resolves a bare external data name); `out` is the only place a job may write."""

    def __init__(self, root: Path, monkeypatch):
        self.root, self.outside, self.out = root, root / "outside", root / "out"
        self.outside.mkdir()
        (self.outside / "victim.txt").write_text("a file the job must never touch\n")
        (self.outside / "README.md").write_bytes(np.arange(515 * 512, dtype=np.float32).tobytes())
        monkeypatch.chdir(self.outside)

    def freeze(self) -> None:
        self.before = snapshot(self.root)

    def assert_untouched(self) -> None:
        after = snapshot(self.root)
        changed = [p for p, v in self.before.items() if after.get(p) != v]
        created = [p for p in after if p not in self.before and not Path(p).is_relative_to(self.out)]
        assert not changed and not created, f"changed {changed}, created {created}"
        assert not self.out.exists() or not any(self.out.rglob("*")), "the refused job wrote output"


def refused(result, message: str) -> None:
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# ---- inputs built here ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    """The user's own graphs (--model onnx) and a tiny rosinality checkpoint (--model stylegan2)."""
    root = tmp_path_factory.mktemp("user_graphs")
    for name, module, example, io in (("map", Mapping(), torch.zeros(2, Z_DIM), ("code", "style")),
                                      ("gen", Synthesis(), torch.zeros(2, W_DIM), ("style", "rgb")),
                                      ("cls", Scorer(), torch.zeros(2, 3, RESOLUTION, RESOLUTION), ("px", "logits"))):
        (root / f"{name}.onnx").write_bytes(to_onnx_bytes(module, example, *io))
    config = StyleGAN2Config(resolution=16, channels=((4, 16), (8, 16), (16, 16)), z_dim=16, w_dim=16, n_mlp=1)
    return {"mapping": root / "map.onnx", "synthesis": root / "gen.onnx", "scorer": root / "cls.onnx",
            "generator": write_random_rosinality_checkpoint(root / "g.pt", config, seed=0)}


def point_to_external_data(tensor: TensorProto, location: str, length: int) -> None:
    """Make `tensor` say its data is `length` bytes at the start of the file `location`."""
    for field in ("raw_data", "float_data", "int64_data", "int32_data", "double_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def with_external_data(model: onnx.ModelProto, graph: Path, location: str, data_file: Path) -> Path:
    """Save `model` to `graph` with its largest initializer in external data: written to
    `data_file`, and named in the graph by `location` (which may point anywhere)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tensor = max(model.graph.initializer, key=lambda t: len(numpy_helper.to_array(t).tobytes()))
    data = numpy_helper.to_array(tensor).tobytes()
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_bytes(data)
    point_to_external_data(tensor, location, len(data))
    graph.write_bytes(model.SerializeToString())
    return graph


def mapping_with_external_weights(location: str, z_dim: int = 515, w_dim: int = 512) -> onnx.ModelProto:
    """A mapping graph z [B, z_dim] -> w [B, w_dim] made with the onnx package (IR version 8), its
    weight in an external data file at `location` (data not written: the bundle's refusal comes first)."""
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[z_dim, w_dim])
    point_to_external_data(weight, location, z_dim * w_dim * 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["z", "W"], ["w"])], "mapping",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", z_dim])],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["batch", w_dim])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# ---- 1. score names -----------------------------------------------------------------------

HOSTILE_NAMES = [  # (name or list of three names, what the one line says)
    ("../../outside/pwn", "is not a safe name"),
    ("{outside}/pwn", "is not a safe name"),                    # absolute
    ("a/b", "is not a safe name"),
    ("a\\b", "is not a safe name"),
    (".hidden", "is not a safe name"),
    ("..", "is not a safe name"),
    ("x" * 65, "is not a safe name"),
    ("smile age", "is not a safe name"),
    (["smile", "smile", "yaw"], "must be unique; smile appear(s) more than once"),
    ("w", "is a column the tables already have"),
    ("sample_id", "is a column the tables already have"),
    ("z", "is a column the tables already have"),
]


def three(name, fill=("age", "yaw")) -> list[str]:
    return list(name) if isinstance(name, list) else [name, *fill]


@pytest.mark.parametrize("model", ["onnx", "stylegan2"])
@pytest.mark.parametrize("name, message", HOSTILE_NAMES)
def test_hostile_score_names_on_the_command_line(monkeypatch, graphs, tmp_path, model, name, message):
    scene = Scene(tmp_path, monkeypatch)
    names = [n.format(outside=scene.outside) for n in three(name)]
    inputs = (["--mapping", str(graphs["mapping"]), "--synthesis", str(graphs["synthesis"])] if model == "onnx"
              else ["--generator", str(graphs["generator"])])
    scene.freeze()
    result = call_job("jobs.export", "--model", model, *inputs, "--scorer", str(graphs["scorer"]),
                      "--score-names", ",".join(names), "--median-samples", "4", "--out", str(scene.out))
    refused(result, message)
    assert "--score-names" in result.stderr
    scene.assert_untouched()


@pytest.mark.parametrize("name, message", HOSTILE_NAMES + [("a\x00b", "is not a safe name"),
                                                           ("", "must be non-empty names")])
def test_hostile_score_names_in_a_hand_edited_manifest(monkeypatch, bundle_dir, tmp_path, name, message):
    scene = Scene(tmp_path, monkeypatch)
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = three(name, manifest["score_names"][1:])  # as many as the scorer has: its dims still agree
    names += manifest["score_names"][len(names):]
    manifest["score_names"] = [n.format(outside=scene.outside) for n in names]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    scene.freeze()
    for job in (["jobs.sample", "--n", "8"], ["jobs.faces"]):
        out = scene.out / ("run" if job[0] == "jobs.sample" else "faces.png")
        result = call_job(*job, "--bundle", str(bundle), "--out", str(out))
        refused(result, message if name != "" else "score_names must be a list of names")
        assert "manifest.json" in result.stderr and "export the bundle again" in result.stderr
    scene.assert_untouched()


@pytest.mark.parametrize("name, message", HOSTILE_NAMES)
def test_hostile_score_names_through_the_python_api(monkeypatch, graphs, tmp_path, bundle_dir, name, message):
    """user_bundle and write_bundle check the names themselves (no command line in front)."""
    scene = Scene(tmp_path, monkeypatch)
    names = [n.format(outside=scene.outside) for n in three(name)]
    scene.freeze()
    with pytest.raises(ExportError, match="score name") as error:
        user_bundle(graphs["mapping"], graphs["synthesis"], graphs["scorer"], names, ScorerAdapter(), scene.out,
                    median_samples=4)
    assert message in str(error.value) and "\n" not in str(error.value)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    payload = {stem: (bundle_dir / entry["file"]).read_bytes() for stem, entry in manifest["files"].items()}
    with pytest.raises(ExportError, match="score name"):
        write_bundle(scene.out, payload, dict(manifest, score_names=names + manifest["score_names"][3:]))
    scene.assert_untouched()


@pytest.mark.parametrize("job", ["fit", "import_vectors"])
@pytest.mark.parametrize("prop", ["../../outside/pwn", "{outside}/pwn", "a/b", "a\\b"])
def test_property_names_never_leave_the_export_directory(monkeypatch, bundle_dir, tmp_path, job, prop):
    """The reference CSV and boundary file names are built from property names: they are
    refused before Ray starts or anything is read. The method's own name check (a property
    is a score name) now refuses them first; file_name, the helper behind every such file
    name, is pinned by test_the_name_helpers."""
    scene = Scene(tmp_path, monkeypatch)
    prop = prop.format(outside=scene.outside)
    run = scene.out / "run"
    scene.freeze()
    if job == "fit":
        result = call_job("jobs.fit", "--run", str(run), "--properties", prop, "--group-by", "none",
                          "--export-csv", str(run / "csv"), "--export-boundaries", str(run / "npy"))
    else:
        result = call_job("jobs.import_vectors", "--csv-dir", str(scene.outside), "--out", str(run / "v.parquet"),
                          "--properties", prop, "--group-by", "none", "--bundle", str(bundle_dir))
    refused(result, "a property's name must be a score name")
    scene.assert_untouched()


def test_the_name_helpers():
    assert check_score_names(["eyes", "hair-color", "v1.2", "_x"], "t", "fix") == ["eyes", "hair-color", "v1.2", "_x"]
    for bad in (["a", "a"], [".a"], ["a/b"], ["w"], [""], "abc", ["x" * 65]):
        with pytest.raises(NameRefused):
            check_score_names(bad, "t", "fix")
    for bad in ("", ".", "..", "a/b", "a\\b", "a\x00b", "/etc/passwd"):
        with pytest.raises(NameRefused):
            file_name(bad)
    assert file_name("..a") == "..a" and reference_csv_name("eyes", "w", "hhh") == "eyes_change_w_vector_hhh.csv"
    assert boundary_name("eyes", "z", "all") == "eyes_z_all_boundary.npy"
    with pytest.raises(NameRefused):
        boundary_name("../x", "w", "all")


# ---- 3. bundle entries --------------------------------------------------------------------

def _entry_outside(kind: str):
    def edit(bundle: Path, manifest: dict, scene: Scene) -> None:
        shutil.copy(bundle / "mapping.onnx", scene.outside / "mapping.onnx")  # same bytes: the hash would match
        manifest["files"]["mapping"]["file"] = {"dotdot": "../outside/mapping.onnx",
                                                "absolute": str(scene.outside / "mapping.onnx"),
                                                "etc": "../../../../../../../../etc/hostname"}[kind]
    return edit


def _symlink(bundle: Path, manifest: dict, scene: Scene) -> None:
    shutil.move(bundle / "mapping.onnx", scene.outside / "mapping.onnx")
    (bundle / "mapping.onnx").symlink_to(scene.outside / "mapping.onnx")


def _manifest_symlink(bundle: Path, manifest: dict, scene: Scene) -> None:
    (scene.outside / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to(scene.outside / "manifest.json")


def _no_sha(bundle: Path, manifest: dict, scene: Scene) -> None:
    manifest["files"]["synthesis"].pop("sha256")


def _wrong_sha(bundle: Path, manifest: dict, scene: Scene) -> None:
    manifest["files"]["scorer"]["sha256"] = hashlib.sha256(b"another graph").hexdigest()


def _external(where: str):
    """The mapping graph replaced by one whose weight lives in an external data file named
    README.md: next to the working directory (where ONNX Runtime would look), or even in the
    bundle. The manifest's hash is updated, so only the external data check stands in the way."""
    def edit(bundle: Path, manifest: dict, scene: Scene) -> None:
        if where == "bundle":
            shutil.copy(scene.outside / "README.md", bundle / "README.md")
        data = mapping_with_external_weights("README.md").SerializeToString()
        (bundle / "mapping.onnx").write_bytes(data)
        manifest["files"]["mapping"]["sha256"] = hashlib.sha256(data).hexdigest()
    return edit


BUNDLE_CASES = [
    (_entry_outside("dotdot"), "the 'mapping' entry names '../outside/mapping.onnx', not a file name inside the bundle"),
    (_entry_outside("absolute"), "not a file name inside the bundle"),
    (_entry_outside("etc"), "not a file name inside the bundle"),
    (_symlink, "mapping.onnx is a link to"),
    (_manifest_symlink, "manifest.json is a link to"),
    (_no_sha, "the 'synthesis' entry has no sha256 of synthesis.onnx"),
    (_wrong_sha, "scorer.onnx does not match the sha256 in the manifest"),
    (_external("cwd"), "mapping.onnx keeps tensor 'W' in an external data file ('README.md')"),
    (_external("bundle"), "mapping.onnx keeps tensor 'W' in an external data file ('README.md')"),
]


@pytest.mark.parametrize("edit, message", BUNDLE_CASES,
                         ids=["dotdot", "absolute", "etc", "symlink", "manifest-symlink", "no-sha256", "wrong-sha256",
                              "external-cwd", "external-in-bundle"])
def test_bundle_entries_stay_in_the_bundle(bundle_dir, tmp_path, monkeypatch, edit, message):
    scene = Scene(tmp_path, monkeypatch)
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(bundle, manifest, scene)
    if not (bundle / "manifest.json").is_symlink():
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    scene.freeze()
    for job in (["jobs.sample", "--n", "8", "--out", str(scene.out / "run")],
                ["jobs.faces", "--out", str(scene.out / "faces.png")]):
        refused(call_job(*job, "--bundle", str(bundle)), message)
    with pytest.raises(BundleError, match="bundle"):
        load_bundle(bundle)
    scene.assert_untouched()


def test_graph_bytes_checks_the_hash_again(bundle_dir, tmp_path):
    """A graph swapped after the bundle was opened is refused where it would run."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    opened = load_bundle(bundle)
    (bundle / "scorer.onnx").write_bytes((bundle / "mapping.onnx").read_bytes())
    with pytest.raises(BundleError, match="does not match the sha256"):
        opened.graph_bytes("scorer")


# ---- 4. external data of the user's own graphs --------------------------------------------

def _user_external(stem: str, location: str):
    """The user's `stem` graph (with its input files in `src`) saved with external data at
    `location`, relative to the graph (a symlink 'link' inside src points to outside)."""
    def make(graphs: dict, scene: Scene, src: Path) -> dict:
        model = onnx.load(str(graphs[stem]))
        target = {"../outside/weights.bin": scene.outside / "weights.bin",
                  "ABS": scene.outside / "weights.bin", "link/weights.bin": scene.outside / "weights.bin",
                  "weights.bin": src / "weights.bin", "sub/weights.bin": src / "sub" / "weights.bin"}[location]
        (src / "link").symlink_to(scene.outside, target_is_directory=True)
        named = str(scene.outside / "weights.bin") if location == "ABS" else location
        files = dict(graphs)
        files[stem] = with_external_data(model, src / f"{stem}.onnx", named, target)
        return files
    return make


SCORER_OUTSIDE = ("../outside/weights.bin", "ABS", "link/weights.bin")
EXTERNAL_CASES = ([("onnx", "scorer", where) for where in SCORER_OUTSIDE]
                  + [("onnx", "mapping", "../outside/weights.bin"), ("onnx", "synthesis", "ABS")]
                  + [("stylegan2", "scorer", where) for where in SCORER_OUTSIDE])  # its only ONNX input


@pytest.mark.parametrize("model, stem, location", EXTERNAL_CASES)
def test_external_data_outside_the_graphs_directory(graphs, tmp_path, monkeypatch, model, stem, location):
    scene = Scene(tmp_path, monkeypatch)
    src = tmp_path / "src"
    src.mkdir()
    files = _user_external(stem, location)(graphs, scene, src)
    inputs = (["--mapping", str(files["mapping"]), "--synthesis", str(files["synthesis"])] if model == "onnx"
              else ["--generator", str(files["generator"])])
    scene.freeze()
    result = call_job("jobs.export", "--model", model, *inputs, "--scorer", str(files["scorer"]),
                      "--score-names", "smile,age,yaw", "--median-samples", "4", "--out", str(scene.out))
    refused(result, "outside the graph's own directory")
    assert f"{stem}.onnx" in result.stderr
    scene.assert_untouched()


@pytest.mark.parametrize("location", ["weights.bin", "sub/weights.bin"])
def test_external_data_inside_the_graphs_directory_is_inlined(graphs, tmp_path, monkeypatch, location):
    """Data next to the user's graph is read from there (not the working directory), and the
    bundle holds it: self-contained graphs, hashed, that load and run from anywhere."""
    scene = Scene(tmp_path, monkeypatch)
    src = tmp_path / "src"
    src.mkdir()
    files = _user_external("scorer", location)(graphs, scene, src)
    result = call_job("jobs.export", "--model", "onnx", "--mapping", str(files["mapping"]), "--synthesis",
                      str(files["synthesis"]), "--scorer", str(files["scorer"]), "--score-names", "smile,age,yaw",
                      "--median-samples", "4", "--out", str(scene.out))
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(scene.out)
    for stem in ("mapping", "synthesis", "scorer"):
        assert not external_data_tensors(onnx.load_from_string(bundle.graph_bytes(stem)))
    assert sorted(p.name for p in scene.out.iterdir()) == ["manifest.json", "mapping.onnx", "scorer.onnx",
                                                            "synthesis.onnx"]
    # The same scores as the user's graph with its data in place.
    import onnxruntime as ort

    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    ours = ort.InferenceSession(bundle.graph_bytes("scorer"), providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(graphs["scorer"]), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours.run(None, {"image": images})[0], theirs.run(None, {"px": images})[0], atol=1e-6)


def test_a_bundle_is_never_written_with_external_data(bundle_dir, tmp_path):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    payload = {stem: (bundle_dir / entry["file"]).read_bytes() for stem, entry in manifest["files"].items()}
    payload["mapping"] = mapping_with_external_weights("README.md").SerializeToString()
    with pytest.raises(ExportError, match="keeps tensor 'W' in an external data file"):
        write_bundle(tmp_path / "out", payload, manifest)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, message", [
    ("dotdot", "the 'editor' entry names '../outside/editor.onnx', not a file name inside the bundle"),
    ("absolute", "not a file name inside the bundle"),
    ("symlink", "editor.onnx is a link to"),
    ("no-sha256", "the 'editor' entry has no sha256"),
    ("external", "editor.onnx keeps tensor 'W' in an external data file ('README.md')"),
])
def test_editor_entries_stay_in_the_editor(bundle_dir, tmp_path, monkeypatch, case, message):
    """An editor directory (jobs.render --bundle) is read through the same checks as a bundle."""
    from compute.editor import EDITOR_FORMAT, EDITOR_VERSION

    scene = Scene(tmp_path, monkeypatch)
    editor = tmp_path / "editor"
    editor.mkdir()
    data = (mapping_with_external_weights("README.md").SerializeToString() if case == "external"
            else (bundle_dir / "mapping.onnx").read_bytes())  # any real graph: it is refused before it runs
    (scene.outside / "editor.onnx").write_bytes(data)
    if case == "symlink":
        (editor / "editor.onnx").symlink_to(scene.outside / "editor.onnx")
    elif case in ("no-sha256", "external"):
        (editor / "editor.onnx").write_bytes(data)
    entry = {"file": {"dotdot": "../outside/editor.onnx", "absolute": str(scene.outside / "editor.onnx")}.get(
        case, "editor.onnx"), "sha256": hashlib.sha256(data).hexdigest()}
    if case == "no-sha256":
        entry.pop("sha256")
    (editor / "manifest.json").write_text(json.dumps({"format": EDITOR_FORMAT, "version": EDITOR_VERSION,
                                                      "files": {"editor": entry}}))
    (scene.outside / "picks.csv").write_text("case_id,group,bundle,z0\n0,hhh,0,0.0\n")
    scene.freeze()
    result = call_job("jobs.render", "--picks", str(scene.outside / "picks.csv"), "--bundle", str(editor),
                      "--out", str(scene.out))
    refused(result, message)
    scene.assert_untouched()
