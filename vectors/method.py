"""The method as data: one frozen, validated value that says everything the method decides.

Which scores are edited (each with its edit schedule and pass cutoff), which scores split
the samples into groups, where the group medians come from, the selection ratio, the
latent space, the validation fraction, the direction estimator and its SVM settings, and
how many resampled fits measure each direction's stability. It is saved (JSON) beside
every artifact and read back, so a run says exactly what produced it, and a stage reuses
an earlier output only when the part of the method that output depends on is unchanged.

The default instance is the seeds' method (docs/method.md). Edit weights are in this
project's sign convention (directions point toward larger scores): the reference's pose
grid {-1.8, -1.2, -0.6, 0, 0.6} was defined along vectors pointing toward smaller scores,
so in our convention it is {-0.6, 0, 0.6, 1.2, 1.8}.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import re
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vectors.errors import InputError
from vectors.estimators import ESTIMATORS, MAX_STABILITY_SPLITS
from vectors.names import SAFE_NAME_RULE, is_safe_name
from vectors.svm import SOLVERS, SvmConfig

SPACES = ("w", "z")
# "w:A-B": edit only synthesis layers A..B (inclusive, from 0) of the per-layer codes (W+).
MEDIAN_SOURCES = ("manifest", "samples")
# How a case's correlation is held against its cutoff: "abs", the seeds' |corr| >= cutoff (an
# edit that moves the score the wrong way can pass), or "signed", corr >= cutoff.
PASS_RULES = ("abs", "signed")
DUALS = ("auto", "true", "false")
MAX_PROPERTIES, MAX_GROUPING, MAX_EDITS = 6, 4, 1000
GLOBAL_GROUP = "all"  # the one group when no score defines groups

# Bounds of the values a method holds, checked in the dtype each is used in. Edit weights
# are float32 where they are used (edit_weights, the edited codes): |w| <= 100 keeps w + e n
# far from float32's range, and distinct weights must stay distinct, and at least
# MIN_WEIGHT_STEP apart, in float32 (1e-320 is 0 there, and an edit of 1e-30 leaves a float32
# code unchanged: every case would be degenerate). C and max_iter go to liblinear/libsvm
# (a C double and a C int): C finite in [1e-6, 1e6], max_iter an integer in [1, 10^7].
MAX_WEIGHT, MIN_WEIGHT_STEP = 100.0, 1e-3
C_BOUNDS, MAX_ITER = (1e-6, 1e6), 10_000_000
# A method file: read only if it is a regular file of at most this many bytes, nested at
# most this deep (a method is 4 levels: table > properties > property > schedule).
MAX_METHOD_BYTES, MAX_METHOD_DEPTH = 1_000_000, 8

# How a message names each setting: its key in a method file, which is also its flag's name
# (ratio: --ratio, max_iter: --max-iter, ...) except the SVM solver's (--svm), so the same
# value is refused with the same words from a method file and from a flag.
LABELS = {"svm.solver": "svm solver (--svm)", "svm.C": "svm C", "svm.scale": "svm scale", "svm.dual": "svm dual",
          "svm.max_iter": "svm max_iter"}


class MethodError(InputError):
    """A method that cannot run: a bad value, or a score the bundle does not have."""


def _label(key: str, name: str | None = None) -> str:
    if key == "schedule":
        return f"the {name} schedule"
    if key == "cutoff":
        return f"the {name} cutoff"
    return LABELS.get(key, key)


def _kind(value) -> str:
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


def _show(value) -> str:
    """A received value for a one-line message: JSON's spelling of booleans and null, long ones cut."""
    if isinstance(value, (bool, np.bool_)):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        try:
            text = repr(value)
        except (RecursionError, ValueError):  # a too deep structure, an int of too many digits
            text = f"<{_kind(value)}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


def _got(value, expected: str) -> str:
    """'got 0.7', or 'got "12" (a string, not a number)' where the type is what is wrong."""
    kind = _kind(value)
    if kind == expected or (expected == "a number" and kind == "an integer"):
        return f"got {_show(value)}"
    return f"got {_show(value)} ({kind}, not {expected})"


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
            raise MethodError(f"{label} must be {self.allowed()}, {_got(value, expected)}")
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
            raise MethodError(f"{label} must be {self.allowed()}, got {_show(text)}") from None
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
    return BOUNDS[key].parse(_label(key, name), text)


def _choice(key: str, value) -> str:
    choices = CHOICES[key]
    if not isinstance(value, str) or value not in choices:
        raise MethodError(f"{_label(key)} must be one of {', '.join(choices)}, {_got(value, 'a string')}")
    return value


def _flag(key: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise MethodError(f"{_label(key)} must be true or false, {_got(value, 'a boolean')}")
    return bool(value)


def _name(what: str, value) -> str:
    if not is_safe_name(value):
        raise MethodError(f"{what} must be a score name ({SAFE_NAME_RULE}), {_got(value, 'a string')}")
    return value


def _sequence(label: str, value, items: str) -> list:
    """A list (a tuple from Python); a string, a table or a number is not one."""
    if not isinstance(value, (list, tuple)):
        raise MethodError(f"{label} must be a list of {items}, {_got(value, 'a list')}")
    return list(value)


def _check_schedule(name: str, schedule) -> tuple[float, ...]:
    label = _label("schedule", name)
    values = _sequence(label, schedule, f"numbers in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}]")
    if len(values) > MAX_EDITS:
        raise MethodError(f"{label} has {len(values):,} weights; a schedule has at most {MAX_EDITS:,} "
                          f"(and all schedules together at most {MAX_EDITS:,} edits per case)")
    weights = tuple(BOUNDS["weight"].check(f"each weight of {label}", v) for v in values)
    if len(set(weights)) < 2:
        raise MethodError(f"{label} needs at least 2 distinct weights, got {list(weights)}")
    repeated = sorted({v for v in weights if weights.count(v) > 1})
    if repeated:
        raise MethodError(f"{label} gives the weight {repeated[0]:g} more than once (the same edits twice), "
                          f"got {list(weights)}")
    # Edits are computed in float32: distinct weights must stay distinct there (1e-320 is 0 in
    # float32), and far enough apart to move a float32 code (an edit of 1e-30 does not).
    single = np.asarray(weights, dtype=np.float32)
    for a, b in itertools.pairwise(np.argsort(single, kind="stable")):
        if single[b] == single[a]:
            raise MethodError(f"{label}: the weights {weights[a]!r} and {weights[b]!r} are the same weight in "
                              f"float32 (edits are computed in float32); distinct weights must be at least "
                              f"{MIN_WEIGHT_STEP:g} apart")
        if round(abs(weights[b] - weights[a]), 9) < MIN_WEIGHT_STEP:  # (0.101 - 0.1 is 0.000999... in binary)
            raise MethodError(f"{label}: the weights {weights[a]!r} and {weights[b]!r} are less than "
                              f"{MIN_WEIGHT_STEP:g} apart; distinct weights must be at least {MIN_WEIGHT_STEP:g} "
                              f"apart to move a float32 code")
    return weights


def _check_svm(svm) -> None:
    if not isinstance(svm, SvmConfig):
        raise MethodError(f"svm must be a table of SVM settings (solver, C, scale, dual, max_iter), "
                          f"{_got(svm, 'a table')}")
    _choice("svm.solver", svm.solver)
    BOUNDS["svm.C"].check(_label("svm.C"), svm.C)
    _flag("svm.scale", svm.scale)
    _choice("svm.dual", svm.dual)
    BOUNDS["svm.max_iter"].check(_label("svm.max_iter"), svm.max_iter)


def svm_settings(base: SvmConfig, changes: dict) -> SvmConfig:
    """`base` with `changes` (from a method file's svm table or from flags), each checked with
    the method's own checks before SvmConfig sees it."""
    fields = tuple(SvmConfig.__dataclass_fields__)
    unknown = [k for k in changes if k not in fields]
    if unknown:
        raise MethodError(f"unknown svm settings: {_names(unknown)} (known: {', '.join(fields)})")
    checked = {}
    for key, value in changes.items():
        if key in ("solver", "dual"):
            checked[key] = _choice(f"svm.{key}", value)
        elif key == "scale":
            checked[key] = _flag("svm.scale", value)
        else:
            checked[key] = BOUNDS[f"svm.{key}"].check(_label(f"svm.{key}"), value)
    return replace(base, **checked)


def _names(values) -> str:
    """Up to 5 names for a message, each shown safely."""
    values = list(values)
    shown = ", ".join(v if is_safe_name(v) else _show(v) for v in values[:5])
    return shown + (f" and {len(values) - 5:,} more" if len(values) > 5 else "")


@dataclass(frozen=True)
class EditedProperty:
    """A score the method finds a direction for: its test edits and its pass cutoff."""

    name: str
    schedule: tuple[float, ...]   # edit weights along the unit direction
    cutoff: float                 # a case passes this property if |corr| (or corr: Method.pass_rule) >= cutoff

    def __post_init__(self):
        _name("a property's name", self.name)
        object.__setattr__(self, "schedule", _check_schedule(self.name, self.schedule))
        object.__setattr__(self, "cutoff", BOUNDS["cutoff"].check(_label("cutoff", self.name), self.cutoff))


# The seeds' vocabulary and constants (v7); v6 used cutoffs 0.75 / 0.77 / 0.80.
SEEDS_PROPERTIES = (
    EditedProperty("eyes", (-1.2, 1.2), 0.92),
    EditedProperty("mouth", (-1.8, -0.9, 0.0, 0.9, 1.8), 0.88),
    EditedProperty("pose", (-0.6, 0.0, 0.6, 1.2, 1.8), 0.92),
)
SEEDS_GROUPING = ("hair_color", "hair_length", "background_mean")
# A property outside the seeds' vocabulary starts from these until the user sets its own.
DEFAULT_SCHEDULE = (-1.8, -0.9, 0.0, 0.9, 1.8)
DEFAULT_CUTOFF = 0.9


def default_property(name: str) -> EditedProperty:
    """The seeds' schedule and cutoff for their names; generic ones for any other score."""
    for p in SEEDS_PROPERTIES:
        if p.name == name:
            return p
    return EditedProperty(name, DEFAULT_SCHEDULE, DEFAULT_CUTOFF)


@dataclass(frozen=True)
class Method:
    properties: tuple[EditedProperty, ...] = SEEDS_PROPERTIES
    group_by: tuple[str, ...] = SEEDS_GROUPING   # 0-4 scores; 2^G groups named by h/l letters
    medians: str = "manifest"       # "manifest": the bundle's fixed medians; "samples": measured
    ratio: float = 0.2              # k = max(int(ratio * group size), 1) per class
    space: str = "w"                # "w" (v7), "z" (v6) or "w:A-B" (only layers A..B of W+)
    validation_fraction: float = 0.2
    orthogonalize: bool = False     # each direction orthogonal to the others of its group
    max_spread: float | None = None  # extra pass condition on consistency, if set
    svm: SvmConfig = field(default_factory=SvmConfig)
    estimator: str = "svm"          # vectors.estimators.ESTIMATORS; "svm" is the reference's fit
    stability_splits: int = 5       # resampled fits per direction for its stability; 0 or 1: off
    pass_rule: str = "abs"          # "abs": |corr| >= cutoff (the seeds'); "signed": corr >= cutoff

    def __post_init__(self):
        """Every setting checked here, strictly typed (a boolean is not a number, a string is not
        a list) and bounded, whether it came from a method file, a flag or Python."""
        properties = _sequence("properties", self.properties, "properties")
        if not 1 <= len(properties) <= MAX_PROPERTIES:
            raise MethodError(f"a method edits 1 to {MAX_PROPERTIES} properties, got {len(properties):,}")
        if not all(isinstance(p, EditedProperty) for p in properties):
            bad = next(p for p in properties if not isinstance(p, EditedProperty))
            raise MethodError(f"each property must be an EditedProperty, {_got(bad, 'an EditedProperty')}")
        group_by = _sequence("group_by", self.group_by, "score names (an empty list: one global group)")
        if len(group_by) > MAX_GROUPING:
            raise MethodError(f"at most {MAX_GROUPING} grouping scores (16 groups), got {len(group_by):,}")
        for name in group_by:
            _name("each group_by entry", name)
        object.__setattr__(self, "properties", tuple(properties))
        object.__setattr__(self, "group_by", tuple(group_by))
        names = self.property_names
        for label, values in (("properties", names), ("grouping scores", self.group_by)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise MethodError(f"{label} named twice: {', '.join(repeated)}")
        both = [p for p in names if p in self.group_by]
        if both:
            raise MethodError(f"{', '.join(both)} cannot be both edited and used for grouping")
        _choice("medians", self.medians)
        object.__setattr__(self, "ratio", BOUNDS["ratio"].check("ratio", self.ratio))
        object.__setattr__(self, "space", _check_space(self.space))
        object.__setattr__(self, "validation_fraction",
                           BOUNDS["validation_fraction"].check("validation_fraction", self.validation_fraction))
        object.__setattr__(self, "orthogonalize", _flag("orthogonalize", self.orthogonalize))
        if self.orthogonalize and len(names) < 2:
            raise MethodError("orthogonalize needs at least 2 properties (one direction has no others)")
        if self.max_spread is not None:
            object.__setattr__(self, "max_spread", BOUNDS["max_spread"].check("max_spread", self.max_spread))
            if not self.group_by:
                raise MethodError("max_spread limits the spread of the grouping scores; with no grouping "
                                  "scores there is nothing to limit")
        _choice("pass_rule", self.pass_rule)
        _check_svm(self.svm)
        _choice("estimator", self.estimator)
        object.__setattr__(self, "stability_splits",
                           BOUNDS["stability_splits"].check("stability_splits", self.stability_splits))
        if self.edits_per_case > MAX_EDITS:
            raise MethodError(f"the schedules give {self.edits_per_case:,} edits per case (the product of their "
                              f"lengths), more than {MAX_EDITS:,}; shorten a schedule")

    # ---- derived views -------------------------------------------------------------
    @property
    def property_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties)

    @property
    def latent(self) -> str:
        """The latent the directions live in and are fitted on: "w" or "z"."""
        return split_space(self.space)[0]

    @property
    def layers(self) -> tuple[int, int] | None:
        """(first, last) synthesis layer an edit moves, inclusive; None: every layer."""
        return split_space(self.space)[1]

    def check_layers(self, num_ws: int | None) -> None:
        """A layer range needs a bundle whose synthesis takes per-layer codes, and must fit in it."""
        if self.layers is None:
            return
        if num_ws is None:
            raise MethodError(f"space {self.space} edits some synthesis layers, but this bundle's synthesis "
                              f"takes one w per image; re-export it (jobs.export writes per-layer graphs) or use space w")
        if self.layers[1] >= num_ws:
            raise MethodError(f"space {self.space} names layers up to {self.layers[1]}, but this bundle's "
                              f"synthesis has {num_ws} (0-{num_ws - 1})")

    @property
    def cutoffs(self) -> dict[str, float]:
        return {p.name: p.cutoff for p in self.properties}

    @property
    def group_names(self) -> tuple[str, ...]:
        """hh.., .., ll.. in the order of `group_by` ('h' before 'l'); ('all',) without grouping."""
        if not self.group_by:
            return (GLOBAL_GROUP,)
        return tuple("".join(letters) for letters in itertools.product("hl", repeat=len(self.group_by)))

    @property
    def edits_per_case(self) -> int:
        return math.prod(len(p.schedule) for p in self.properties)

    def edit_weights(self) -> np.ndarray:
        """(E, P) float32: every combination of the schedules, the first property outermost."""
        return np.array(list(itertools.product(*(p.schedule for p in self.properties))),
                        dtype=np.float32).reshape(-1, len(self.properties))

    def fit_config(self) -> dict:
        """What a fitted direction depends on (schedules and cutoffs do not matter to it)."""
        full = self.to_dict()
        # Directions are fitted on the whole latent: a layer range changes only the edits.
        return {"properties": list(self.property_names), "space": self.latent, **{k: full[k] for k in (
            "group_by", "medians", "ratio", "validation_fraction", "orthogonalize", "svm", "estimator",
            "stability_splits")}}

    def check_scores(self, score_names) -> None:
        """Every property and grouping score must be an output of the bundle's scorer."""
        unknown = [s for s in (*self.property_names, *self.group_by) if s not in score_names]
        if unknown:
            raise MethodError(f"the scorer has no output named {', '.join(unknown)} "
                              f"(its outputs: {', '.join(score_names)})")

    def with_cutoffs(self, cutoffs: dict[str, float]) -> Method:
        unknown = [n for n in cutoffs if n not in self.property_names]
        if unknown:
            raise MethodError(f"cutoffs name {', '.join(unknown)}, which the method does not edit "
                              f"(it edits {', '.join(self.property_names)})")
        return replace(self, properties=tuple(replace(p, cutoff=cutoffs.get(p.name, p.cutoff))
                                              for p in self.properties))

    # ---- saving and loading --------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["properties"] = [{"name": p.name, "schedule": list(p.schedule), "cutoff": p.cutoff}
                              for p in self.properties]
        data["group_by"] = list(self.group_by)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Method:
        """A method from a parsed method file or a saved one: the file's structure is checked here,
        every value by the dataclasses' own checks."""
        if not isinstance(data, dict):
            raise MethodError(f"a method is a table of settings, {_got(data, 'a table')}")
        allowed = tuple(cls.__dataclass_fields__)
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise MethodError(f"unknown method settings: {_names(unknown)} (known: {', '.join(sorted(allowed))})")
        values = dict(data)
        if "properties" in values:
            items = _sequence("properties", values["properties"],
                              "score names or tables with name, schedule and cutoff")
            # Too many: Method refuses the count without building each one.
            values["properties"] = items if len(items) > MAX_PROPERTIES else tuple(map(_property_from, items))
        if "svm" in values:
            if not isinstance(values["svm"], dict):
                raise MethodError(f"svm must be a table of SVM settings (solver, C, scale, dual, max_iter), "
                                  f"{_got(values['svm'], 'a table')}")
            values["svm"] = svm_settings(SvmConfig(), values["svm"])
        return cls(**values)

    def save(self, path: Path) -> None:
        from compute.files import write_text_atomic  # a fresh temp file renamed over `path`, never through a link

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


def split_space(space: str) -> tuple[str, tuple[int, int] | None]:
    """"w" -> ("w", None); "w:0-6" -> ("w", (0, 6)) for a checked space string."""
    latent, _, layers = space.partition(":")
    if not layers:
        return latent, None
    first, last = layers.split("-")
    return latent, (int(first), int(last))


def _check_space(space) -> str:
    if isinstance(space, str):
        if space in SPACES:
            return space
        layers = re.fullmatch(r"w:([0-9]{1,4})(?:-([0-9]{1,4}))?", space.replace(" ", ""))
        if layers and int(layers[1]) <= int(layers[2] or layers[1]):
            return f"w:{int(layers[1])}-{int(layers[2] or layers[1])}"
    raise MethodError(f"space must be w (v7), z (v6) or a layer range of w such as w:0-6, {_got(space, 'a string')}")


def _property_from(item) -> EditedProperty:
    """A property of a method file: a score name (its default schedule and cutoff) or a table."""
    if isinstance(item, str):
        return default_property(_name("each property", item))
    if not isinstance(item, dict):
        raise MethodError(f"each property must be a score name or a table with name, schedule and cutoff, "
                          f"{_got(item, 'a table')}")
    if "name" not in item:
        raise MethodError(f"a property table needs a name, got {_show(item)}")
    name = _name("a property's name", item["name"])
    unknown = [k for k in item if k not in ("name", "schedule", "cutoff")]
    if unknown:
        raise MethodError(f"property {name}: unknown keys {_names(unknown)} (known: name, schedule, cutoff)")
    base = default_property(name)
    return EditedProperty(name, item.get("schedule", base.schedule), item.get("cutoff", base.cutoff))


def _depth(data) -> int:
    """How deeply lists and tables nest (a scalar: 0), without recursion; stops past the limit."""
    deepest, stack = 0, [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack and deepest <= MAX_METHOD_DEPTH:
        value, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in (value.values() if isinstance(value, dict) else value)
                     if isinstance(c, (dict, list)))
    return deepest


def load_method(path) -> Method:
    """A method from a JSON or TOML file (by suffix; .toml is TOML, anything else JSON).

    Only a regular file of at most MAX_METHOD_BYTES is read, and what it parses to may nest at
    most MAX_METHOD_DEPTH deep: a device, a pipe, a huge or a deeply nested file is refused
    with one line instead of filling memory or overflowing the parser's stack."""
    path = Path(path)
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    too_big = (f"method file {path} is larger than {MAX_METHOD_BYTES:,} bytes, the most a method file may be "
               f"(a method is a few settings)")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise MethodError(f"method file {path} is not a regular file (a directory, pipe or device); "
                              f"give a {kind} file")
        if info.st_size > MAX_METHOD_BYTES:
            raise MethodError(too_big)
        with open(path, "rb") as f:
            raw = f.read(MAX_METHOD_BYTES + 1)
    except OSError as exc:
        raise MethodError(f"cannot read method file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_METHOD_BYTES:  # it grew since the stat
        raise MethodError(too_big)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MethodError(f"{path} is not valid {kind}: not UTF-8 text (byte {exc.start:,})") from None
    try:
        if kind == "TOML":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise MethodError(f"{path} is not a method: it nests lists or tables too deeply to parse (more than "
                          f"{MAX_METHOD_DEPTH} deep; a method needs 4)") from None
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        first = (str(exc).splitlines() or [""])[0]
        raise MethodError(f"{path} is not valid {kind}: {first[:200]}") from None
    depth = _depth(data)
    if depth > MAX_METHOD_DEPTH:
        raise MethodError(f"{path} is not a method: it nests lists or tables more than {MAX_METHOD_DEPTH} deep "
                          f"(a method needs 4: its table, the properties list, a property's table, a schedule)")
    try:
        return Method.from_dict(data)
    except MethodError as exc:
        raise MethodError(f"{path}: {exc}") from None
