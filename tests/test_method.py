"""The method as data: the seeds' defaults, validation, JSON/TOML round trips, command-line
flags, and the pose schedule's sign against the reference's own edits."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import call_job
from jobs.cli import parser
from jobs.cli.method_args import add_method_arguments, method_from
from vectors.edits import apply_edits
from vectors.errors import InputError
from vectors.interop import read_reference_csv, reference_csv_name, write_reference_csv
from vectors.method import EditedProperty, Method, MethodError, load_method


def test_default_is_the_seeds_method_in_our_sign_convention():
    m = Method()
    assert m.property_names == ("eyes", "mouth", "pose")
    assert m.group_by == ("hair_color", "hair_length", "background_mean")
    assert m.group_names == ("hhh", "hhl", "hlh", "hll", "lhh", "lhl", "llh", "lll")
    assert [p.schedule for p in m.properties] == [(-1.2, 1.2), (-1.8, -0.9, 0.0, 0.9, 1.8),
                                                  (-0.6, 0.0, 0.6, 1.2, 1.8)]
    assert m.cutoffs == {"eyes": 0.92, "mouth": 0.88, "pose": 0.92}
    assert (m.ratio, m.space, m.medians, m.validation_fraction) == (0.2, "w", "manifest", 0.2)
    assert m.svm.solver == "linearsvc" and m.svm.C == 1.0 and not m.svm.scale
    weights = m.edit_weights()
    assert weights.shape == (50, 3) and weights[0].tolist() == pytest.approx([-1.2, -1.8, -0.6])
    assert weights[1].tolist() == pytest.approx([-1.2, -1.8, 0.0])  # the last property varies fastest


def test_group_names_for_zero_to_four_grouping_scores():
    assert Method(group_by=()).group_names == ("all",)
    assert Method(group_by=("hair_color",)).group_names == ("h", "l")
    four = Method(properties=(EditedProperty("eyes", (-1, 1), 0.9),),
                  group_by=("hair_color", "hair_length", "background_mean", "mouth"))
    assert len(four.group_names) == 16 and four.group_names[1] == "hhhl"


def test_pose_schedule_reproduces_the_reference_edits_with_imported_vectors(tmp_path):
    """The reference edits w + e n_eyes + m n_mouth + p n_pose with its own vectors (toward
    smaller scores) over eyes {-1.2, 1.2} x mouth {-1.8..1.8} x pose {-1.8, -1.2, -0.6, 0, 0.6}.
    Our directions, imported from its CSVs, point the other way; with our default schedule
    the 50 edited codes of a case must be the reference's 50, up to order."""
    rng = np.random.default_rng(0)
    reference = {p: rng.standard_normal(512) for p in ("eyes", "mouth", "pose")}
    reference = {p: v / np.linalg.norm(v) for p, v in reference.items()}
    for p, v in reference.items():  # the reference's files hold its own signs
        write_reference_csv(-v, tmp_path / reference_csv_name(p, "w", "hhh"))
    ours = np.stack([read_reference_csv(tmp_path / reference_csv_name(p, "w", "hhh")) for p in reference])
    w = rng.standard_normal((1, 512)).astype(np.float32)
    edited = apply_edits(w, ours[None], Method().edit_weights())[0]
    grid = itertools.product((-1.2, 1.2), (-1.8, -0.9, 0.0, 0.9, 1.8), (-1.8, -1.2, -0.6, 0.0, 0.6))
    expected = np.stack([w[0] + e * reference["eyes"] + m * reference["mouth"] + p * reference["pose"]
                         for e, m, p in grid])
    order = lambda a: a[np.lexsort(np.round(a, 4).T[::-1])]  # noqa: E731 - rows sorted, for "up to order"
    np.testing.assert_allclose(order(edited), order(expected), atol=1e-5)
    # The pose grid as the reference wrote it, kept with flipped vectors, matches only 30 of 50.
    mirrored = apply_edits(w, ours[None], Method().edit_weights() * np.array([1, 1, -1], np.float32))[0]
    matches = sum(np.abs(expected - row).max(axis=1).min() < 1e-4 for row in mirrored)
    assert matches == 30


@pytest.mark.parametrize("changes, message", [
    (dict(properties=()), "1 to 6 properties"),
    (dict(properties=tuple(EditedProperty(f"p{i}", (0, 1), 0.5) for i in range(7))), "1 to 6 properties"),
    (dict(group_by=("a", "b", "c", "d", "e")), "at most 4 grouping scores"),
    (dict(group_by=("eyes",)), "eyes cannot be both edited and used for grouping"),
    (dict(group_by=("hair_color", "hair_color")), "named twice: hair_color"),
    (dict(ratio=0.0), "ratio must be in (0, 0.5]"),
    (dict(space="q"), "space must be w (v7), z (v6) or a layer range"),
    (dict(medians="fixed"), "medians must be"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(max_spread=float("nan")), "max_spread must be a number >= 0"),
    (dict(max_spread=-1.0), "max_spread must be a number >= 0"),
    (dict(group_by=(), max_spread=0.5), "nothing to limit"),
    (dict(properties=tuple(EditedProperty(n, tuple(range(11)), 0.9) for n in ("a", "b", "c"))), "1,331 edits"),
])
def test_bad_methods_are_refused_with_the_reason(changes, message):
    with pytest.raises(MethodError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Method(**changes)


@pytest.mark.parametrize("schedule, cutoff, message", [
    ((1.0, 1.0), 0.9, "at least 2 distinct"), ((1.0,), 0.9, "at least 2 distinct"),
    ((0.0, float("inf")), 0.9, "finite"), ((0.0, 1.0), 1.5, "cutoff must be in"),
    ((0.0, 1.0), -0.1, "cutoff must be in"),
])
def test_bad_properties_are_refused(schedule, cutoff, message):
    with pytest.raises(MethodError, match=message):
        EditedProperty("smile", schedule, cutoff)


def test_unknown_score_names_are_refused_naming_the_available_ones():
    with pytest.raises(MethodError, match="no output named smile, gender .*its outputs: eyes, mouth"):
        Method(properties=(EditedProperty("smile", (0, 1), 0.9),), group_by=("gender",)).check_scores(
            ["eyes", "mouth"])


def test_json_and_toml_round_trip(tmp_path):
    m = Method(properties=(EditedProperty("smile", (-1.5, -0.5, 0.5, 1.5), 0.9), EditedProperty("age", (-1, 1), 0.85)),
               group_by=("gender",), medians="samples", ratio=0.15, orthogonalize=True)
    m.save(tmp_path / "m.json")
    assert load_method(tmp_path / "m.json") == m
    assert Method.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    (tmp_path / "m.toml").write_text(
        'properties = [{name = "smile", schedule = [-1.5, -0.5, 0.5, 1.5], cutoff = 0.9},\n'
        '              {name = "age", schedule = [-1.0, 1.0], cutoff = 0.85}]\n'
        'group_by = ["gender"]\nmedians = "samples"\nratio = 0.15\northogonalize = true\n')
    assert load_method(tmp_path / "m.toml") == m
    (tmp_path / "names.json").write_text('{"properties": ["pose", "smile"], "group_by": []}')
    short = load_method(tmp_path / "names.json")
    assert short.properties[0].schedule == (-0.6, 0.0, 0.6, 1.2, 1.8) and short.properties[1].cutoff == 0.9


def test_the_method_files_of_docs_method_md_load(tmp_path):
    """Its JSON file is the seeds' method, every setting spelled out (the pass rule too); its
    TOML file is the smile/age method it describes."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "method.md").read_text()
    (block,) = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    (tmp_path / "seeds.json").write_text(block)
    assert load_method(tmp_path / "seeds.json") == Method() and '"pass_rule": "abs"' in block
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    (tmp_path / "smile.toml").write_text(block)
    m = load_method(tmp_path / "smile.toml")
    assert m.property_names == ("smile", "age") and m.edits_per_case == 8 and m.group_names == ("h", "l")


@pytest.mark.parametrize("text, suffix, message", [
    ('{"ratio": 0.2, "colour": 1}', ".json", "unknown method settings: colour"),
    ("{not json", ".json", "is not valid JSON"),
    ("ratio = ", ".toml", "is not valid TOML"),
    ('{"group_by": "gender"}', ".json", "group_by must be a list"),
    ('{"svm": {"C": -1}}', ".json", "C must be > 0"),
])
def test_bad_method_files_name_the_file_and_the_problem(tmp_path, text, suffix, message):
    path = tmp_path / f"m{suffix}"
    path.write_text(text)
    with pytest.raises(MethodError, match=message):
        load_method(path)


def _flags(*argv, base=None):
    p = parser("t")
    add_method_arguments(p)
    return method_from(p.parse_args(list(argv)), base)


def test_flags_build_a_method_on_top_of_the_base():
    m = _flags("--properties", "smile,age", "--group-by", "gender", "--schedule", "smile=-1.5,-0.5,0.5,1.5",
               "--cutoffs", "smile=0.9,age=0.85", "--ratio", "0.1", "--medians", "samples")
    assert m.property_names == ("smile", "age") and m.group_by == ("gender",)
    assert m.properties[0].schedule == (-1.5, -0.5, 0.5, 1.5) and m.cutoffs == {"smile": 0.9, "age": 0.85}
    assert (m.ratio, m.medians) == (0.1, "samples")
    assert _flags() == Method()
    seeds = _flags("--cutoffs", "0.90,0.90,0.88", "--pose=-1.8,0.6", "--global", "--C", "0.5")
    assert seeds.cutoffs == {"eyes": 0.9, "mouth": 0.9, "pose": 0.88} and seeds.properties[2].schedule == (-1.8, 0.6)
    assert seeds.group_by == () and seeds.svm.C == 0.5
    base = Method(space="z", ratio=0.3)
    assert _flags("--cutoffs", "0.5,0.5,0.5", base=base).ratio == 0.3  # unset flags keep the base
    assert _flags("--group-by", "none").group_names == ("all",)


@pytest.mark.parametrize("argv, message", [
    (["--cutoffs", "0.9,0.9"], "2 numbers for 3 properties"),
    (["--cutoffs", "eyes=0.9,0.8"], "mixes NAME=C and bare numbers"),
    (["--cutoffs", "smile=0.9"], "cutoffs name smile, which the method does not edit"),
    (["--schedule", "smile=1,2"], "schedule is given for smile"),
    (["--schedule", "1,2"], "NAME=W1,W2"),
    (["--eyes", "a,b"], "--eyes must be comma-separated numbers"),
    (["--properties", "eyes,hair_color"], "cannot be both edited and used for grouping"),
])
def test_bad_flags_are_input_errors(argv, message):
    with pytest.raises(InputError, match=message):
        _flags(*argv)


def test_a_bad_method_file_is_one_line_exit_2_before_any_work(tmp_path):
    method_file = tmp_path / "m.json"
    method_file.write_text('{"properties": [{"name": "eyes", "schedule": [1, 1], "cutoff": 0.9}]}')
    result = call_job("jobs.vectorfind", "--out", str(tmp_path / "run"), "--method", str(method_file))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "at least 2 distinct" in result.stderr and not (tmp_path / "run").exists()


def test_a_layer_range_is_a_space_of_w_whose_fit_is_the_whole_w():
    ranged = Method(space="w: 2-5")
    assert (ranged.space, ranged.latent, ranged.layers) == ("w:2-5", "w", (2, 5))
    assert Method(space="w:3").layers == (3, 3)
    assert Method().layers is None and Method(space="z").latent == "z"
    # Directions are fitted on w whatever the layers: one fit serves every range.
    assert ranged.fit_config() == Method().fit_config()
    assert Method.from_dict(ranged.to_dict()) == ranged
    ranged.check_layers(10)
    with pytest.raises(MethodError, match="has 4 \\(0-3\\)"):
        ranged.check_layers(4)
    with pytest.raises(MethodError, match="takes one w per image"):
        ranged.check_layers(None)
    Method().check_layers(None)


def test_fixed_medians_that_do_not_fit_are_refused_from_the_first_samples():
    from vectors.groups import check_fixed_medians

    rng = np.random.default_rng(0)
    scores = {"hair_color": rng.normal(2.0, 1.0, 1000), "hair_length": rng.normal(0.0, 1.0, 1000),
              "background_mean": rng.normal(0.0, 1.0, 1000)}
    method = Method()  # groups by these three; fixed medians from the bundle
    fitting = {"hair_color": 2.0, "hair_length": 0.0, "background_mean": 0.0}
    check_fixed_medians(method, fitting, scores, n=8000)  # eight groups of about 125: fine
    # Medians measured on another model: hair_color's sits 5 sd below every sample here, so
    # each group with an 'l' for it is empty, whatever n.
    foreign = dict(fitting, hair_color=-3.0)
    with pytest.raises(InputError, match=r"fixed medians \(hair_color -3, .*\) do not fit this model: of the first "
                                         r"1,000 samples, group 'lhh' 0, 'lhl' 0, 'llh' 0, 'lll' 0 .* "
                                         r"its samples' medians are hair_color 1\.9.*use --medians samples"):
        check_fixed_medians(method, foreign, scores, n=8000)
    # A group of 1 in 1,000 at n = 8,000 projects to 8 samples: k = int(0.2 * 8) = 1 < 3.
    one = {k: v.copy() for k, v in scores.items()}
    one["hair_color"][:] = 10.0
    one["hair_color"][0] = -10.0
    with pytest.raises(InputError, match="group 'l"):
        check_fixed_medians(method, dict(fitting, hair_color=0.0), one, n=8000)
    check_fixed_medians(Method(medians="samples"), foreign, scores, n=8000)  # measured medians always fit
