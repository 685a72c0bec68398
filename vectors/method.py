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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from vectors.errors import InputError
from vectors.estimators import ESTIMATORS, MAX_STABILITY_SPLITS
from vectors.svm import SvmConfig

SPACES = ("w", "z")
# "w:A-B": edit only synthesis layers A..B (inclusive, from 0) of the per-layer codes (W+).
MEDIAN_SOURCES = ("manifest", "samples")
MAX_PROPERTIES, MAX_GROUPING, MAX_EDITS = 6, 4, 1000
GLOBAL_GROUP = "all"  # the one group when no score defines groups


class MethodError(InputError):
    """A method that cannot run: a bad value, or a score the bundle does not have."""


@dataclass(frozen=True)
class EditedProperty:
    """A score the method finds a direction for: its test edits and its pass cutoff."""

    name: str
    schedule: tuple[float, ...]   # edit weights along the unit direction
    cutoff: float                 # a case passes this property if |corr| >= cutoff

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise MethodError(f"a property needs a score name, got {self.name!r}")
        try:
            schedule = tuple(float(v) for v in self.schedule)
            cutoff = float(self.cutoff)
        except (TypeError, ValueError):
            raise MethodError(f"property {self.name}: schedule and cutoff must be numbers, got "
                              f"{self.schedule!r} and {self.cutoff!r}") from None
        if len(set(schedule)) < 2 or not all(math.isfinite(v) for v in schedule):
            raise MethodError(f"the {self.name} schedule needs at least 2 distinct finite weights, "
                              f"got {list(schedule)}")
        if not 0.0 <= cutoff <= 1.0:
            raise MethodError(f"the {self.name} cutoff must be in [0, 1], got {cutoff}")
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "cutoff", cutoff)


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

    def __post_init__(self):
        object.__setattr__(self, "properties", tuple(self.properties))
        object.__setattr__(self, "group_by", tuple(self.group_by))
        names = self.property_names
        if not 1 <= len(names) <= MAX_PROPERTIES:
            raise MethodError(f"a method edits 1 to {MAX_PROPERTIES} properties, got {len(names)}")
        if len(self.group_by) > MAX_GROUPING:
            raise MethodError(f"at most {MAX_GROUPING} grouping scores (16 groups), got {len(self.group_by)}")
        for label, values in (("properties", names), ("grouping scores", self.group_by)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise MethodError(f"{label} named twice: {', '.join(repeated)}")
        both = [p for p in names if p in self.group_by]
        if both:
            raise MethodError(f"{', '.join(both)} cannot be both edited and used for grouping")
        if self.medians not in MEDIAN_SOURCES:
            raise MethodError(f"medians must be 'manifest' or 'samples', got {self.medians!r}")
        if not (isinstance(self.ratio, (int, float)) and 0 < self.ratio <= 0.5):
            raise MethodError(f"ratio must be in (0, 0.5], got {self.ratio!r}")
        object.__setattr__(self, "space", _check_space(self.space))
        if not (isinstance(self.validation_fraction, (int, float)) and 0 < self.validation_fraction < 1):
            raise MethodError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.orthogonalize and len(names) < 2:
            raise MethodError("orthogonalize needs at least 2 properties (one direction has no others)")
        if self.max_spread is not None:
            if not (isinstance(self.max_spread, (int, float)) and math.isfinite(self.max_spread)
                    and self.max_spread >= 0):
                raise MethodError(f"max_spread must be a number >= 0, got {self.max_spread!r}")
            if not self.group_by:
                raise MethodError("max_spread limits the spread of the grouping scores; with no grouping "
                                  "scores there is nothing to limit")
        if self.estimator not in ESTIMATORS:
            raise MethodError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if not (isinstance(self.stability_splits, int) and not isinstance(self.stability_splits, bool)
                and 0 <= self.stability_splits <= MAX_STABILITY_SPLITS):
            raise MethodError(f"stability_splits must be an integer in [0, {MAX_STABILITY_SPLITS}] (0 or 1: off), "
                              f"got {self.stability_splits!r}")
        if self.edits_per_case > MAX_EDITS:
            raise MethodError(f"the schedules give {self.edits_per_case:,} edits per case (the product of their "
                              f"lengths), more than {MAX_EDITS:,}; shorten a schedule")
        object.__setattr__(self, "ratio", float(self.ratio))
        object.__setattr__(self, "validation_fraction", float(self.validation_fraction))

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

    def with_cutoffs(self, cutoffs: dict[str, float]) -> "Method":
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
    def from_dict(cls, data: dict) -> "Method":
        if not isinstance(data, dict):
            raise MethodError(f"a method is a table of settings, got {type(data).__name__}")
        allowed = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise MethodError(f"unknown method settings: {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
        values = dict(data)
        try:
            if "properties" in values:
                values["properties"] = tuple(_property_from(p) for p in values["properties"])
            if "group_by" in values:
                if isinstance(values["group_by"], str):
                    raise TypeError("group_by must be a list of score names")
                values["group_by"] = tuple(values["group_by"])
            if "svm" in values:
                values["svm"] = SvmConfig(**values["svm"])
        except (TypeError, ValueError) as exc:
            raise MethodError(f"bad method setting: {exc}") from exc
        return cls(**values)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def split_space(space: str) -> tuple[str, tuple[int, int] | None]:
    """"w" -> ("w", None); "w:0-6" -> ("w", (0, 6)) for a checked space string."""
    latent, _, layers = space.partition(":")
    if not layers:
        return latent, None
    first, last = layers.split("-")
    return latent, (int(first), int(last))


def _check_space(space) -> str:
    if space in SPACES:
        return space
    text = str(space).replace(" ", "")
    if text.startswith("w:"):
        first, _, last = text[2:].partition("-")
        if first.isdigit() and (last.isdigit() or not last):
            last = last or first
            if int(first) <= int(last):
                return f"w:{int(first)}-{int(last)}"
    raise MethodError(f"space must be w (v7), z (v6) or a layer range of w such as w:0-6, got {space!r}")


def _property_from(item) -> EditedProperty:
    if isinstance(item, str):
        return default_property(item)
    if not isinstance(item, dict) or "name" not in item:
        raise TypeError(f"each property is a name or a table with name, schedule and cutoff, got {item!r}")
    unknown = sorted(set(item) - {"name", "schedule", "cutoff"})
    if unknown:
        raise TypeError(f"property {item['name']}: unknown keys {', '.join(unknown)}")
    base = default_property(item["name"])
    return EditedProperty(item["name"], item.get("schedule", base.schedule), item.get("cutoff", base.cutoff))


def load_method(path) -> Method:
    """A method from a JSON or TOML file (by suffix; .toml is TOML, anything else JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MethodError(f"cannot read method file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise MethodError(f"{path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                          f"{str(exc).splitlines()[0]}") from exc
    try:
        return Method.from_dict(data)
    except MethodError as exc:
        raise MethodError(f"{path}: {exc}") from exc
