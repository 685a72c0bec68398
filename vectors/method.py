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
import re
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vectors.method_values import (
    BOUNDS,
    MAX_EDITS,
    MethodError,
    check_schedule,
    check_svm,
    choice,
    flag,
    got,
    label,
    score_name,
    sequence,
    show,
    shown_names,
    svm_settings,
)
from vectors.svm import SvmConfig

SPACES = ("w", "z")
# "w:A-B": edit only synthesis layers A..B (inclusive, from 0) of the per-layer codes (W+).
MAX_PROPERTIES, MAX_GROUPING = 6, 4
GLOBAL_GROUP = "all"  # the one group when no score defines groups

# A method file: read only if it is a regular file of at most this many bytes, nested at
# most this deep (a method is 4 levels: table > properties > property > schedule).
MAX_METHOD_BYTES, MAX_METHOD_DEPTH = 1_000_000, 8


@dataclass(frozen=True)
class EditedProperty:
    """A score the method finds a direction for: its test edits and its pass cutoff."""

    name: str
    schedule: tuple[float, ...]   # edit weights along the unit direction
    cutoff: float                 # a case passes this property if |corr| (or corr: Method.pass_rule) >= cutoff

    def __post_init__(self):
        score_name("a property's name", self.name)
        object.__setattr__(self, "schedule", check_schedule(self.name, self.schedule))
        object.__setattr__(self, "cutoff", BOUNDS["cutoff"].check(label("cutoff", self.name), self.cutoff))


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
        properties = sequence("properties", self.properties, "properties")
        if not 1 <= len(properties) <= MAX_PROPERTIES:
            raise MethodError(f"a method edits 1 to {MAX_PROPERTIES} properties, got {len(properties):,}")
        if not all(isinstance(p, EditedProperty) for p in properties):
            bad = next(p for p in properties if not isinstance(p, EditedProperty))
            raise MethodError(f"each property must be an EditedProperty, {got(bad, 'an EditedProperty')}")
        group_by = sequence("group_by", self.group_by, "score names (an empty list: one global group)")
        if len(group_by) > MAX_GROUPING:
            raise MethodError(f"at most {MAX_GROUPING} grouping scores (16 groups), got {len(group_by):,}")
        for name in group_by:
            score_name("each group_by entry", name)
        object.__setattr__(self, "properties", tuple(properties))
        object.__setattr__(self, "group_by", tuple(group_by))
        names = self.property_names
        for what, values in (("properties", names), ("grouping scores", self.group_by)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise MethodError(f"{what} named twice: {', '.join(repeated)}")
        both = [p for p in names if p in self.group_by]
        if both:
            raise MethodError(f"{', '.join(both)} cannot be both edited and used for grouping")
        choice("medians", self.medians)
        object.__setattr__(self, "ratio", BOUNDS["ratio"].check("ratio", self.ratio))
        object.__setattr__(self, "space", _check_space(self.space))
        object.__setattr__(self, "validation_fraction",
                           BOUNDS["validation_fraction"].check("validation_fraction", self.validation_fraction))
        object.__setattr__(self, "orthogonalize", flag("orthogonalize", self.orthogonalize))
        if self.orthogonalize and len(names) < 2:
            raise MethodError("orthogonalize needs at least 2 properties (one direction has no others)")
        if self.max_spread is not None:
            object.__setattr__(self, "max_spread", BOUNDS["max_spread"].check("max_spread", self.max_spread))
            if not self.group_by:
                raise MethodError("max_spread limits the spread of the grouping scores; with no grouping "
                                  "scores there is nothing to limit")
        choice("pass_rule", self.pass_rule)
        check_svm(self.svm)
        choice("estimator", self.estimator)
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
                              f"takes one w per image; re-export it (jobs.export writes per-layer graphs) "
                              f"or use space w")
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
            raise MethodError(f"a method is a table of settings, {got(data, 'a table')}")
        allowed = tuple(cls.__dataclass_fields__)
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise MethodError(f"unknown method settings: {shown_names(unknown)} (known: {', '.join(sorted(allowed))})")
        values = dict(data)
        if "properties" in values:
            items = sequence("properties", values["properties"],
                              "score names or tables with name, schedule and cutoff")
            # Too many: Method refuses the count without building each one.
            values["properties"] = items if len(items) > MAX_PROPERTIES else tuple(map(_property_from, items))
        if "svm" in values:
            if not isinstance(values["svm"], dict):
                raise MethodError(f"svm must be a table of SVM settings (solver, C, scale, dual, max_iter), "
                                  f"{got(values['svm'], 'a table')}")
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
    raise MethodError(f"space must be w (v7), z (v6) or a layer range of w such as w:0-6, {got(space, 'a string')}")


def _property_from(item) -> EditedProperty:
    """A property of a method file: a score name (its default schedule and cutoff) or a table."""
    if isinstance(item, str):
        return default_property(score_name("each property", item))
    if not isinstance(item, dict):
        raise MethodError(f"each property must be a score name or a table with name, schedule and cutoff, "
                          f"{got(item, 'a table')}")
    if "name" not in item:
        raise MethodError(f"a property table needs a name, got {show(item)}")
    name = score_name("a property's name", item["name"])
    unknown = [k for k in item if k not in ("name", "schedule", "cutoff")]
    if unknown:
        raise MethodError(f"property {name}: unknown keys {shown_names(unknown)} (known: name, schedule, cutoff)")
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
