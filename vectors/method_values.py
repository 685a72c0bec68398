"""The method's values, checked one at a time: each numeric setting against its bounds, each
choice against its choices, score names, edit schedules and the SVM's settings. A bad value
is refused with one line that names the setting as a method file and a flag both name it,
the value received (and its type, where the type is what is wrong), and what is allowed;
vectors.method.Method runs these checks on everything it holds."""
from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, replace

import numpy as np

from vectors.errors import InputError
from vectors.estimators import ESTIMATORS, MAX_STABILITY_SPLITS
from vectors.names import SAFE_NAME_RULE, is_safe_name
from vectors.svm import SOLVERS, SvmConfig

MEDIAN_SOURCES = ("manifest", "samples")
# How a case's correlation is held against its cutoff: "abs", the seeds' |corr| >= cutoff (an
# edit that moves the score the wrong way can pass), or "signed", corr >= cutoff.
PASS_RULES = ("abs", "signed")
DUALS = ("auto", "true", "false")
MAX_EDITS = 1000  # edits per case, all schedules together

# Bounds of the values a method holds, checked in the dtype each is used in. Edit weights
# are float32 where they are used (edit_weights, the edited codes): |w| <= 100 keeps w + e n
# far from float32's range, and distinct weights must stay distinct, and at least
# MIN_WEIGHT_STEP apart, in float32 (1e-320 is 0 there, and an edit of 1e-30 leaves a float32
# code unchanged: every case would be degenerate). C and max_iter go to liblinear/libsvm
# (a C double and a C int): C finite in [1e-6, 1e6], max_iter an integer in [1, 10^7].
MAX_WEIGHT, MIN_WEIGHT_STEP = 100.0, 1e-3
C_BOUNDS, MAX_ITER = (1e-6, 1e6), 10_000_000
# How a message names each setting: its key in a method file, which is also its flag's name
# (ratio: --ratio, max_iter: --max-iter, ...) except the SVM solver's (--svm), so the same
# value is refused with the same words from a method file and from a flag.
LABELS = {"svm.solver": "svm solver (--svm)", "svm.C": "svm C", "svm.scale": "svm scale", "svm.dual": "svm dual",
          "svm.max_iter": "svm max_iter"}


class MethodError(InputError):
    """A method that cannot run: a bad value, or a score the bundle does not have."""


def label(key: str, name: str | None = None) -> str:
    if key == "schedule":
        return f"the {name} schedule"
    if key == "cutoff":
        return f"the {name} cutoff"
    return LABELS.get(key, key)


def kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a number"
    return f"a {type(value).__name__}"


def show(value) -> str:
    """A received value for a one-line message: JSON's spelling of booleans and null, long ones cut."""
    if isinstance(value, (bool, np.bool_)):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        try:
            text = repr(value)
        except (RecursionError, ValueError):  # a too deep structure, an int of too many digits
            text = f"<{kind(value)}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


def got(value, expected: str) -> str:
    """'got 0.7', or 'got "12" (a string, not a number)' where the type is what is wrong."""
    received = kind(value)
    if received == expected or (expected == "a number" and received == "an integer"):
        return f"got {show(value)}"
    return f"got {show(value)} ({received}, not {expected})"


@dataclass(frozen=True)
class Bound:
    """A numeric setting's allowed values: a finite number (or an integer) in a range."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    text: str = ""          # the allowed values in words, where the range alone says too little

    def allowed(self) -> str:
        if self.text:
            return self.text
        fmt = (lambda v: f"{int(v):,}") if self.integer else (lambda v: f"{v:g}")
        bounds = f"{'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"
        return f"an integer in {bounds}" if self.integer else f"in {bounds}"

    def check(self, label: str, value):
        """The value as a float (an int for integers), or MethodError naming label, value and range."""
        expected = "an integer" if self.integer else "a number"
        number = None
        if not isinstance(value, (bool, np.bool_)) and isinstance(
                value, numbers.Integral if self.integer else numbers.Real):
            try:
                number = int(value) if self.integer else float(value)
            except (OverflowError, ValueError):  # an integer too large for a float
                pass
        if number is None or not self.admits(number):
            raise MethodError(f"{label} must be {self.allowed()}, {got(value, expected)}")
        return number

    def admits(self, x) -> bool:
        if isinstance(x, float) and not math.isfinite(x):  # (an int is exact: never converted to a float)
            return False
        return (self.lo < x if self.lo_open else self.lo <= x) and (x < self.hi if self.hi_open else x <= self.hi)

    def parse(self, label: str, text: str):
        """A flag's text as a checked number: the same message as a bad value in a method file."""
        try:
            value = int(text.strip()) if self.integer else float(text.strip())
        except ValueError:
            raise MethodError(f"{label} must be {self.allowed()}, got {show(text)}") from None
        return self.check(label, value)


BOUNDS = {
    "ratio": Bound(0.0, 0.5, lo_open=True),
    "validation_fraction": Bound(0.0, 1.0, lo_open=True, hi_open=True),
    "max_spread": Bound(0.0, math.inf, text="a number >= 0 (finite)"),
    "stability_splits": Bound(0, MAX_STABILITY_SPLITS, integer=True,
                              text=f"an integer in [0, {MAX_STABILITY_SPLITS}] (0 or 1: off)"),
    "svm.C": Bound(*C_BOUNDS, text=f"> 0: a number in [{C_BOUNDS[0]:g}, {C_BOUNDS[1]:g}]"),
    "svm.max_iter": Bound(1, MAX_ITER, integer=True),
    "cutoff": Bound(0.0, 1.0),
    "weight": Bound(-MAX_WEIGHT, MAX_WEIGHT, text=f"a finite number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]"),
}
CHOICES = {"medians": MEDIAN_SOURCES, "pass_rule": PASS_RULES, "estimator": ESTIMATORS, "svm.solver": SOLVERS,
           "svm.dual": DUALS}


def parse_setting(key: str, text: str, name: str | None = None):
    """A number given on the command line (--ratio, --C, --max-iter, --cutoffs, ...), checked
    with the bounds a method file's value is checked with; `name`: the property of a cutoff."""
    return BOUNDS[key].parse(label(key, name), text)


def choice(key: str, value) -> str:
    choices = CHOICES[key]
    if not isinstance(value, str) or value not in choices:
        raise MethodError(f"{label(key)} must be one of {', '.join(choices)}, {got(value, 'a string')}")
    return value


def flag(key: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise MethodError(f"{label(key)} must be true or false, {got(value, 'a boolean')}")
    return bool(value)


def score_name(what: str, value) -> str:
    if not is_safe_name(value):
        raise MethodError(f"{what} must be a score name ({SAFE_NAME_RULE}), {got(value, 'a string')}")
    return value


def sequence(label: str, value, items: str) -> list:
    """A list (a tuple from Python); a string, a table or a number is not one."""
    if not isinstance(value, (list, tuple)):
        raise MethodError(f"{label} must be a list of {items}, {got(value, 'a list')}")
    return list(value)


def check_schedule(name: str, schedule) -> tuple[float, ...]:
    what = label("schedule", name)
    values = sequence(what, schedule, f"numbers in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    if len(values) > MAX_EDITS:
        raise MethodError(f"{what} has {len(values):,} weights; a schedule has at most {MAX_EDITS:,} "
                          f"(and all schedules together at most {MAX_EDITS:,} edits per case)")
    weights = tuple(BOUNDS["weight"].check(f"each weight of {what}", v) for v in values)
    if len(set(weights)) < 2:
        raise MethodError(f"{what} needs at least 2 distinct weights, got {list(weights)}")
    repeated = sorted({v for v in weights if weights.count(v) > 1})
    if repeated:
        raise MethodError(f"{what} gives the weight {repeated[0]:g} more than once (the same edits twice), "
                          f"got {list(weights)}")
    # Edits are computed in float32: distinct weights must stay distinct there (1e-320 is 0 in
    # float32), and far enough apart to move a float32 code (an edit of 1e-30 does not).
    single = np.asarray(weights, dtype=np.float32)
    for a, b in itertools.pairwise(np.argsort(single, kind="stable")):
        if single[b] == single[a]:
            raise MethodError(f"{what}: the weights {weights[a]!r} and {weights[b]!r} are the same weight in "
                              f"float32 (edits are computed in float32); distinct weights must be at least "
                              f"{MIN_WEIGHT_STEP:g} apart")
        if round(abs(weights[b] - weights[a]), 9) < MIN_WEIGHT_STEP:  # (0.101 - 0.1 is 0.000999... in binary)
            raise MethodError(f"{what}: the weights {weights[a]!r} and {weights[b]!r} are less than "
                              f"{MIN_WEIGHT_STEP:g} apart; distinct weights must be at least {MIN_WEIGHT_STEP:g} "
                              f"apart to move a float32 code")
    return weights


def check_svm(svm) -> None:
    if not isinstance(svm, SvmConfig):
        raise MethodError(f"svm must be a table of SVM settings (solver, C, scale, dual, max_iter), "
                          f"{got(svm, 'a table')}")
    choice("svm.solver", svm.solver)
    BOUNDS["svm.C"].check(label("svm.C"), svm.C)
    flag("svm.scale", svm.scale)
    choice("svm.dual", svm.dual)
    BOUNDS["svm.max_iter"].check(label("svm.max_iter"), svm.max_iter)


def svm_settings(base: SvmConfig, changes: dict) -> SvmConfig:
    """`base` with `changes` (from a method file's svm table or from flags), each checked with
    the method's own checks before SvmConfig sees it."""
    fields = tuple(SvmConfig.__dataclass_fields__)
    unknown = [k for k in changes if k not in fields]
    if unknown:
        raise MethodError(f"unknown svm settings: {shown_names(unknown)} (known: {', '.join(fields)})")
    checked = {}
    for key, value in changes.items():
        if key in ("solver", "dual"):
            checked[key] = choice(f"svm.{key}", value)
        elif key == "scale":
            checked[key] = flag("svm.scale", value)
        else:
            checked[key] = BOUNDS[f"svm.{key}"].check(label(f"svm.{key}"), value)
    return replace(base, **checked)


def shown_names(values) -> str:
    """Up to 5 names for a message, each shown safely."""
    values = list(values)
    shown = ", ".join(v if is_safe_name(v) else show(v) for v in values[:5])
    return shown + (f" and {len(values) - 5:,} more" if len(values) > 5 else "")
