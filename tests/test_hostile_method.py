"""Hostile method values (issue 22, items 9 and 10): method files and flags whose values were
taken silently wrong (a string read as true, a string read as a list, a boolean read as a
number), gave tracebacks (nested lists where names belong, a 100,000-deep file), or passed
the check only to fail after sampling (C = inf, max_iter = 10^14) or to "succeed" with every
case degenerate (schedules that overflow or collapse in float32, where edits are computed).

Every case runs `jobs.vectorfind` (or `jobs.fit`) in this process as a user would, on a real
method file (JSON, and TOML where its types differ) or real flags, and checks that it ends
with exit status 2 and exactly one `error: ...` line naming the setting, the value received
and what is allowed, no traceback, nothing written (the run directory is not created and the
test's directory holds only the method file, unchanged), and Ray not started. Each refusal
comes from vectors.method's one validation, so a file and a flag get the same words.

Cases beyond the issue's list: duplicated weights, weights closer than 0.001, C below 1e-6
and NaN, max_iter as a float, stability_splits as a float, ratio / validation_fraction /
max_spread / medians / pass_rule / space / estimator / solver / dual / scale of the wrong type or out of
range, properties given as a string or a table, property tables without a name or with
unknown keys, unsafe score names, too many properties, a 5,000-weight schedule, unknown
settings, a top-level list, TOML dates, integers too long to parse, a non-UTF-8 file, a
file over 1,000,000 bytes, a directory, /dev/zero, nesting 20 deep (parsed, then refused).
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from conftest import call_job

DEEP = 100_000
NAME_RULE = "must be a score name (letters, digits"

# (case id, JSON text, TOML text or None, message): each file is refused with `message`.
FILE_CASES = [
    # item 9: types
    ("orthogonalize-string", '{"orthogonalize": "no"}', 'orthogonalize = "no"',
     "orthogonalize must be true or false, got 'no' (a string, not a boolean)"),
    ("orthogonalize-number", '{"orthogonalize": 1}', "orthogonalize = 1",
     "orthogonalize must be true or false, got 1 (an integer, not a boolean)"),
    ("schedule-string", '{"properties": [{"name": "eyes", "schedule": "12"}]}',
     '[[properties]]\nname = "eyes"\nschedule = "12"\n',
     "the eyes schedule must be a list of numbers in [-100, 100], got '12' (a string, not a list)"),
    ("cutoff-bool", '{"properties": [{"name": "eyes", "cutoff": true}]}',
     '[[properties]]\nname = "eyes"\ncutoff = true\n',
     "the eyes cutoff must be in [0, 1], got true (a boolean, not a number)"),
    ("cutoff-string", '{"properties": [{"name": "eyes", "cutoff": "0.9"}]}', None,
     "the eyes cutoff must be in [0, 1], got '0.9' (a string, not a number)"),
    ("C-bool", '{"svm": {"C": true}}', "[svm]\nC = true\n",
     "svm C must be > 0: a number in [1e-06, 1e+06], got true (a boolean, not a number)"),
    ("weights-bool", '{"properties": [{"name": "eyes", "schedule": [true, false]}]}', None,
     "each weight of the eyes schedule must be a finite number in [-100, 100], got true (a boolean, not a number)"),
    ("group-by-numbers", '{"group_by": [1, 2]}', "group_by = [1, 2]",
     f"each group_by entry {NAME_RULE}"),
    ("group-by-nested", '{"group_by": [["a"], ["a"]]}', 'group_by = [["a"], ["a"]]',
     "got ['a'] (a list, not a string)"),
    ("group-by-string", '{"group_by": "gender"}', 'group_by = "gender"',
     "group_by must be a list of score names (an empty list: one global group), got 'gender' (a string, not a list)"),
    ("properties-string", '{"properties": "eyes"}', 'properties = "eyes"',
     "properties must be a list of score names or tables with name, schedule and cutoff, got 'eyes' (a string"),
    ("properties-table", '{"properties": {"eyes": 1}}', "[properties]\neyes = 1\n",
     "properties must be a list of score names or tables with name, schedule and cutoff, got {'eyes': 1} (a table"),
    ("properties-nested", '{"properties": [["eyes"]]}', 'properties = [["eyes"]]',
     "each property must be a score name or a table with name, schedule and cutoff, got ['eyes'] (a list"),
    ("property-name-number", '{"properties": [{"name": 5}]}', "[[properties]]\nname = 5\n",
     f"a property's name {NAME_RULE}"),
    ("property-name-unsafe", '{"properties": ["../../tmp/x"]}', None, f"each property {NAME_RULE}"),
    ("property-without-name", '{"properties": [{"schedule": [1, 2]}]}', None, "a property table needs a name"),
    ("property-unknown-key", '{"properties": [{"name": "eyes", "weights": [1, 2]}]}', None,
     "property eyes: unknown keys weights (known: name, schedule, cutoff)"),
    ("too-many-properties", json.dumps({"properties": [f"p{i}" for i in range(100_000)]}), None,
     "a method edits 1 to 6 properties, got 100,000"),
    ("ratio-string", '{"ratio": "0.2"}', 'ratio = "0.2"', "ratio must be in (0, 0.5], got '0.2' (a string, not a number)"),
    ("ratio-bool", '{"ratio": true}', "ratio = true", "ratio must be in (0, 0.5], got true (a boolean, not a number)"),
    ("ratio-null", '{"ratio": null}', None, "ratio must be in (0, 0.5], got null"),
    ("ratio-date", None, "ratio = 1979-05-27", "ratio must be in (0, 0.5], got datetime.date(1979, 5, 27) (a date"),
    ("ratio-huge-integer", '{"ratio": ' + "9" * 4000 + "}", None, "ratio must be in (0, 0.5], got 9999"),
    ("ratio-too-many-digits", '{"ratio": ' + "9" * 5000 + "}", None, "is not valid JSON: Exceeds the limit"),
    ("medians-number", '{"medians": 1}', "medians = 1",
     "medians must be one of manifest, samples, got 1 (an integer, not a string)"),
    ("space-list", '{"space": ["w"]}', 'space = ["w"]',
     "space must be w (v7), z (v6) or a layer range of w such as w:0-6, got ['w'] (a list, not a string)"),
    ("space-unicode-digit", '{"space": "w:\\u00b2"}', None, "space must be w (v7), z (v6) or a layer range"),
    ("estimator-bool", '{"estimator": true}', None, "estimator must be one of svm, svm_refit"),
    ("pass-rule-unknown", '{"pass_rule": "absolute"}', 'pass_rule = "absolute"',
     "pass_rule must be one of abs, signed, got 'absolute'"),
    ("pass-rule-bool", '{"pass_rule": true}', "pass_rule = true",
     "pass_rule must be one of abs, signed, got true (a boolean, not a string)"),
    ("pass-rule-list", '{"pass_rule": ["signed"]}', 'pass_rule = ["signed"]',
     "pass_rule must be one of abs, signed, got ['signed'] (a list, not a string)"),
    ("stability-splits-float", '{"stability_splits": 5.0}', "stability_splits = 5.0",
     "stability_splits must be an integer in [0, 100] (0 or 1: off), got 5.0 (a number, not an integer)"),
    ("scale-string", '{"svm": {"scale": "no"}}', '[svm]\nscale = "no"\n',
     "svm scale must be true or false, got 'no' (a string, not a boolean)"),
    ("dual-bool", '{"svm": {"dual": true}}', "[svm]\ndual = true\n",
     "svm dual must be one of auto, true, false, got true (a boolean, not a string)"),
    ("solver-unknown", '{"svm": {"solver": "lasso"}}', None, "svm solver (--svm) must be one of linearsvc, svc"),
    ("svm-list", '{"svm": [1]}', "svm = [1]", "svm must be a table of SVM settings"),
    ("svm-unknown-key", '{"svm": {"gamma": 1}}', None, "unknown svm settings: gamma"),
    ("unknown-settings", json.dumps({f"colour{i}": 1 for i in range(100)}), None,
     "unknown method settings: colour0, colour1, colour2, colour3, colour4 and 95 more"),
    ("top-level-list", "[1]", None, "a method is a table of settings, got [1] (a list, not a table)"),
    # item 9: depth
    ("deep-100000", "[" * DEEP + "]" * DEEP, "x = " + "[" * DEEP + "]" * DEEP,
     "nests lists or tables too deeply to parse"),
    ("deep-20", '{"properties": ' + "[" * 20 + "]" * 20 + "}", "properties = " + "[" * 20 + "]" * 20,
     "nests lists or tables more than 8 deep"),
    # item 10: values that passed and failed after sampling, or "succeeded" degenerate
    ("C-inf", '{"svm": {"C": Infinity}}', "[svm]\nC = inf\n",
     "svm C must be > 0: a number in [1e-06, 1e+06], got inf"),
    ("C-nan", '{"svm": {"C": NaN}}', "[svm]\nC = nan\n", "svm C must be > 0: a number in [1e-06, 1e+06], got nan"),
    ("C-subnormal", '{"svm": {"C": 1e-320}}', None, "svm C must be > 0: a number in [1e-06, 1e+06], got 1e-320"),
    ("C-negative", '{"svm": {"C": -1}}', None, "svm C must be > 0"),
    ("max-iter-huge", '{"svm": {"max_iter": 100000000000000}}', "[svm]\nmax_iter = 100000000000000\n",
     "svm max_iter must be an integer in [1, 10,000,000], got 100000000000000"),
    ("max-iter-float", '{"svm": {"max_iter": 1e14}}', "[svm]\nmax_iter = 1e14\n",
     "svm max_iter must be an integer in [1, 10,000,000], got 100000000000000.0 (a number, not an integer)"),
    ("schedule-overflows-float32", '{"properties": [{"name": "eyes", "schedule": [-1e308, 1e308]}]}',
     '[[properties]]\nname = "eyes"\nschedule = [-1e308, 1e308]\n',
     "each weight of the eyes schedule must be a finite number in [-100, 100], got -1e+308"),
    ("schedule-above-100", '{"properties": [{"name": "eyes", "schedule": [0, 100.5]}]}', None,
     "each weight of the eyes schedule must be a finite number in [-100, 100], got 100.5"),
    ("schedule-infinite", '{"properties": [{"name": "eyes", "schedule": [0, Infinity]}]}',
     '[[properties]]\nname = "eyes"\nschedule = [0, inf]\n', "got inf"),
    ("schedule-collapses-in-float32", '{"properties": [{"name": "eyes", "schedule": [0, 1e-320]}]}',
     '[[properties]]\nname = "eyes"\nschedule = [0, 1e-320]\n',
     "the eyes schedule: the weights 0.0 and 1e-320 are the same weight in float32"),
    ("schedule-equal-in-float32", '{"properties": [{"name": "mouth", "schedule": [1.0, 1.00000001]}]}', None,
     "the mouth schedule: the weights 1.0 and 1.00000001 are the same weight in float32"),
    ("schedule-too-close", '{"properties": [{"name": "eyes", "schedule": [0, 1e-30]}]}', None,
     "the weights 0.0 and 1e-30 are less than 0.001 apart"),
    ("schedule-repeated-weight", '{"properties": [{"name": "eyes", "schedule": [1, 1, 2]}]}', None,
     "the eyes schedule gives the weight 1 more than once"),
    ("schedule-one-weight", '{"properties": [{"name": "eyes", "schedule": [1, 1]}]}', None,
     "the eyes schedule needs at least 2 distinct weights"),
    ("schedule-5000-weights", json.dumps({"properties": [{"name": "eyes", "schedule": list(range(5000))}]}), None,
     "the eyes schedule has 5,000 weights; a schedule has at most 1,000"),
    ("cutoff-above-1", '{"properties": [{"name": "eyes", "cutoff": 1.5}]}', None,
     "the eyes cutoff must be in [0, 1], got 1.5"),
    ("ratio-above-half", '{"ratio": 0.7}', "ratio = 0.7", "ratio must be in (0, 0.5], got 0.7"),
    ("validation-fraction-1", '{"validation_fraction": 1}', "validation_fraction = 1",
     "validation_fraction must be in (0, 1), got 1"),
    ("max-spread-inf", '{"max_spread": 1e999}', "max_spread = inf", "max_spread must be a number >= 0 (finite), got inf"),
    ("max-spread-negative", '{"max_spread": -0.5}', None, "max_spread must be a number >= 0 (finite), got -0.5"),
    ("stability-splits-huge", '{"stability_splits": 1000}', None, "stability_splits must be an integer in [0, 100]"),
]

FILE_VARIANTS = [pytest.param(case_id, ".json", text, message, id=f"{case_id}-json")
                 for case_id, text, _, message in FILE_CASES if text is not None] + \
                [pytest.param(case_id, ".toml", text, message, id=f"{case_id}-toml")
                 for case_id, _, text, message in FILE_CASES if text is not None]

# (case id, flags, message): the same checks from the command line.
FLAG_CASES = [
    ("C-inf", ["--C", "inf"], "svm C must be > 0: a number in [1e-06, 1e+06], got inf"),
    ("C-nan", ["--C", "nan"], "svm C must be > 0: a number in [1e-06, 1e+06], got nan"),
    ("C-zero", ["--C", "0"], "svm C must be > 0: a number in [1e-06, 1e+06], got 0.0"),
    ("C-text", ["--C", "big"], "svm C must be > 0: a number in [1e-06, 1e+06], got 'big'"),
    ("max-iter-exponent", ["--max-iter", "1e14"], "svm max_iter must be an integer in [1, 10,000,000], got '1e14'"),
    ("max-iter-huge", ["--max-iter", "100000000000000"],
     "svm max_iter must be an integer in [1, 10,000,000], got 100000000000000"),
    ("max-iter-zero", ["--max-iter", "0"], "svm max_iter must be an integer in [1, 10,000,000], got 0"),
    ("ratio-text", ["--ratio", "abc"], "ratio must be in (0, 0.5], got 'abc'"),
    ("ratio-above-half", ["--ratio", "0.7"], "ratio must be in (0, 0.5], got 0.7"),
    ("validation-fraction-1", ["--validation-fraction", "1"], "validation_fraction must be in (0, 1), got 1.0"),
    ("max-spread-inf", ["--max-spread", "inf"], "max_spread must be a number >= 0 (finite), got inf"),
    ("stability-splits-float", ["--stability-splits", "2.5"],
     "stability_splits must be an integer in [0, 100] (0 or 1: off), got '2.5'"),
    ("medians-unknown", ["--medians", "fixed"], "medians must be one of manifest, samples, got 'fixed'"),
    ("pass-rule-unknown", ["--pass-rule", "Signed"], "pass_rule must be one of abs, signed, got 'Signed'"),
    ("solver-unknown", ["--svm", "lasso"], "svm solver (--svm) must be one of linearsvc, svc, got 'lasso'"),
    ("dual-unknown", ["--dual", "maybe"], "svm dual must be one of auto, true, false, got 'maybe'"),
    ("estimator-unknown", ["--estimator", "lasso"],
     "estimator must be one of svm, svm_refit, bagged_svm, svm_cv, mean_diff, ridge, got 'lasso'"),
    ("space-unicode-digit", ["--space", "w:\u00b2"], "space must be w (v7), z (v6) or a layer range"),
    ("schedule-overflows-float32", ["--eyes=-1e308,1e308"],
     "each weight of the eyes schedule must be a finite number in [-100, 100], got -1e+308"),
    ("schedule-collapses-in-float32", ["--schedule", "eyes=0,1e-320"],
     "the eyes schedule: the weights 0.0 and 1e-320 are the same weight in float32"),
    ("schedule-too-close", ["--pose=0,0.0001"], "the weights 0.0 and 0.0001 are less than 0.001 apart"),
    ("schedule-repeated-weight", ["--mouth=0,1,1"], "the mouth schedule gives the weight 1 more than once"),
    ("cutoff-inf", ["--cutoffs", "0.9,inf,0.9"], "the mouth cutoff must be in [0, 1], got inf"),
    ("cutoff-text", ["--cutoffs", "eyes=true"], "the eyes cutoff must be in [0, 1], got 'true'"),
    ("group-by-unsafe", ["--group-by", "../x"], f"each group_by entry {NAME_RULE}"),
    ("property-unsafe", ["--properties", "eyes,../x"], f"a property's name {NAME_RULE}"),
]


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def refused_once(root: Path, job: str, *args: str) -> str:
    """Run the job and check the refusal: exit 2, one `error:` line, no traceback, nothing
    written under `root`, Ray not started by it; the line."""
    before, ray_before = _files(root), _ray_started()
    out = root / "run"
    result = call_job(job, "--out", str(out), *args) if job == "jobs.vectorfind" else \
        call_job(job, "--run", str(out), *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    assert not out.exists() and _files(root) == before
    assert _ray_started() == ray_before
    return lines[0]


@pytest.mark.parametrize("case_id, suffix, text, message", FILE_VARIANTS)
def test_a_hostile_method_file_is_one_line_exit_2_before_any_work(tmp_path, case_id, suffix, text, message):
    path = tmp_path / f"method{suffix}"
    path.write_text(text)
    line = refused_once(tmp_path, "jobs.vectorfind", "--method", str(path))
    assert line.startswith(f"error: {path}") and message in line, line
    assert len(line) < 400, line  # a value is shown cut, never whole


@pytest.mark.parametrize("case_id, flags, message", [pytest.param(*c, id=c[0]) for c in FLAG_CASES])
def test_a_hostile_method_flag_is_one_line_exit_2_before_any_work(tmp_path, case_id, flags, message):
    line = refused_once(tmp_path, "jobs.vectorfind", *flags)
    assert message in line, line


@pytest.mark.parametrize("flags", [["--C", "inf"], ["--max-iter", "1e14"], ["--max-iter", "100000000000000"]])
def test_the_fit_job_refuses_the_same_flags_before_reading_the_run(tmp_path, flags):
    line = refused_once(tmp_path, "jobs.fit", *flags)
    assert "svm" in line


@pytest.mark.parametrize("setting, flags", [
    ({"svm": {"C": float("inf")}}, ["--C", "inf"]),
    ({"svm": {"max_iter": 10 ** 14}}, ["--max-iter", str(10 ** 14)]),
    ({"ratio": 0.7}, ["--ratio", "0.7"]),
    ({"max_spread": float("inf")}, ["--max-spread", "inf"]),
    ({"medians": "fixed"}, ["--medians", "fixed"]),
    ({"pass_rule": "sign"}, ["--pass-rule", "sign"]),
    ({"properties": [{"name": "eyes", "schedule": [0, 1e-320]}]}, ["--eyes=0,1e-320"]),
    ({"properties": [{"name": "eyes", "schedule": [-1e308, 1e308]}]}, ["--eyes=-1e308,1e308"]),
    ({"properties": ["eyes", "mouth", "pose"], "group_by": ["../x"]}, ["--group-by", "../x"]),
])
def test_a_file_and_a_flag_are_refused_with_the_same_words(tmp_path, setting, flags):
    path = tmp_path / "method.json"
    path.write_text(json.dumps(setting))  # Python's json writes inf as Infinity, which it reads back
    from_file = refused_once(tmp_path, "jobs.vectorfind", "--method", str(path))
    from_flag = refused_once(tmp_path, "jobs.vectorfind", *flags)
    assert from_file == from_flag.replace("error: ", f"error: {path}: ", 1), (from_file, from_flag)


def test_files_that_are_not_method_files_are_refused_before_reading_them(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"ratio": 0.2' + " " * 1_000_001 + "}")
    assert "is larger than 1,000,000 bytes" in refused_once(tmp_path, "jobs.vectorfind", "--method", str(big))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xferatio = 0.2\n")
    assert "is not valid TOML: not UTF-8 text (byte 0)" in refused_once(
        tmp_path, "jobs.vectorfind", "--method", str(binary))
    folder = tmp_path / "folder.json"
    folder.mkdir()
    assert "is not a regular file" in refused_once(tmp_path, "jobs.vectorfind", "--method", str(folder))
    # A device is never opened (reading /dev/zero would never end); a link to it is the same.
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    assert "is not a regular file" in refused_once(tmp_path, "jobs.vectorfind", "--method", str(tmp_path / "zero.json"))
    assert "cannot read method file" in refused_once(tmp_path, "jobs.vectorfind", "--method",
                                                     str(tmp_path / "missing.json"))


def test_valid_method_files_at_the_bounds_still_load(tmp_path):
    from vectors.method import load_method

    path = tmp_path / "edge.toml"
    path.write_text('ratio = 0.5\nvalidation_fraction = 0.999\nmax_spread = 0\nstability_splits = 0\n'
                    'pass_rule = "signed"\northogonalize = false\n[[properties]]\nname = "eyes"\nschedule = [-100, -99.999, 0, 100]\n'
                    'cutoff = 0\n[[properties]]\nname = "mouth"\ncutoff = 1\n'
                    '[svm]\nC = 1e-6\nmax_iter = 10000000\nscale = true\ndual = "false"\n')
    m = load_method(path)
    assert m.properties[0].schedule == (-100.0, -99.999, 0.0, 100.0) and m.cutoffs == {"eyes": 0.0, "mouth": 1.0}
    assert (m.ratio, m.validation_fraction, m.max_spread, m.svm.C, m.svm.max_iter) == (0.5, 0.999, 0.0, 1e-6, 10 ** 7)
    assert m.pass_rule == "signed"
    assert load_method(path) == type(m).from_dict(json.loads(json.dumps(m.to_dict())))
