"""Command-line flags that set the method (vectors.method.Method).

A job starts from a base method (the seeds' default, the one recorded beside the input it
reads, or `--method FILE`) and applies only the flags the user gave, so `jobs.test` on a
run fitted with other properties tests those properties without repeating them. The flags
are argparse.SUPPRESS by default: "not given" is then visible, and the help shows the
seeds' values in words instead of a misleading `None`.

Flags are only parsed here: numbers are read as text and converted by
vectors.method_values.parse_setting, and every value is checked by Method's own
validation, so a value is refused with the same one-line message (and the same bounds)
from a flag as from a method file; no flag is checked by argparse (whose refusals are two
lines).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from jobs.cli import UsageError, parse_floats
from vectors.estimators import ESTIMATORS
from vectors.method import Method, default_property, load_method
from vectors.method_values import DUALS, MEDIAN_SOURCES, PASS_RULES, parse_setting, svm_settings
from vectors.svm import SOLVERS

SHORTHANDS = ("eyes", "mouth", "pose")  # the seeds' per-property schedule flags


def add_method_arguments(p: argparse.ArgumentParser, fit: bool = True, test: bool = True,
                         grid_axes: bool = False) -> None:
    """grid_axes: leave out --ratio, --space and --estimator, which jobs.grid takes as lists."""
    g = p.add_argument_group("method (default: the seeds' v7 method; see docs/method.md)")
    add = lambda *a, **k: g.add_argument(*a, default=argparse.SUPPRESS, **k)  # noqa: E731
    add("--method", metavar="FILE", help="a method file (JSON, or TOML by its .toml suffix); flags override it")
    add("--properties", metavar="A,B", help="scores to find directions for (default: eyes,mouth,pose)")
    add("--group-by", metavar="A,B", help="0-4 grouping scores, or 'none' for one global group "
                                            "(default: hair_color,hair_length,background_mean)")
    add("--medians", metavar="{" + ",".join(MEDIAN_SOURCES) + "}",
        help="group medians: the bundle's fixed ones or measured on the samples (default: manifest)")
    if not grid_axes:
        add("--ratio", help="k = max(int(ratio * group size), 1), in (0, 0.5] (default: 0.2)")
        add("--space", help="latent space: w (v7), z (v6: the mapping's whole input, z and any label dims) or a layer range of w, w:A-B (default: w)")
    if fit:
        add("--validation-fraction", help="validation share of each class, in (0, 1) (default: 0.2)")
        add("--global", dest="global_fit", action="store_true",
            help="one direction per property from all samples (same as --group-by none)")
        add("--orthogonalize", action="store_true",
            help="make each property's direction orthogonal to the others of its group")
        add("--svm", metavar="{" + ",".join(SOLVERS) + "}",
            help="linearsvc (the reference) or svc (kernel='linear', scikit-learn-intelex if installed) "
                 "(default: linearsvc)")
        add("--C", help="SVM regularisation, in [1e-06, 1e+06] (default: 1.0)")
        add("--scale", action="store_true", help="standardise latent dims before fitting")
        add("--dual", metavar="{" + ",".join(DUALS) + "}", help="LinearSVC dual/primal (default: auto)")
        add("--max-iter", help="solver iteration limit, in [1, 10,000,000] (default: 1000)")
        if not grid_axes:
            add("--estimator", metavar="{" + ",".join(ESTIMATORS) + "}",
                help="how a direction is fitted: svm (the reference's LinearSVC on the 80%% split), svm_refit, "
                     "bagged_svm, svm_cv, mean_diff or ridge; see vectors/estimators.py (default: svm)")
        add("--stability-splits", metavar="B",
            help="resampled fits per direction for its stability (mean pairwise cosine); 0 or 1: off (default: 5)")
    if test:
        add("--schedule", action="append", metavar="NAME=W1,W2,...",
            help="edit weights of one property, e.g. smile=-1.5,-0.5,0.5,1.5 (repeatable)")
        add("--cutoffs", metavar="LIST", help="|corr| pass cutoffs: NAME=C,... or one number per property "
                                              "in order (default: 0.92,0.88,0.92; v6 used 0.75,0.77,0.80)")
        add("--max-spread", help="also require consistency (mean std of the grouping scores "
                                 "over a case's edits) <= this")
        add("--pass-rule", metavar="{" + ",".join(PASS_RULES) + "}",
            help="abs: |corr| >= cutoff (the seeds'); signed: corr >= cutoff, so an edit that moves the score "
                 "the wrong way fails (default: abs)")
        for name in SHORTHANDS:
            add(f"--{name}", metavar="W1,W2,...", help=f"{name} edit weights (shorthand for --schedule {name}=...)")


def method_from(args: argparse.Namespace, base: Method | None = None) -> Method:
    """The method the flags ask for, on top of --method FILE, else `base`, else the seeds' default."""
    given = vars(args)
    method = load_method(given["method"]) if "method" in given else (base or Method())
    changes = {}
    if "properties" in given:
        names = [n.strip() for n in given["properties"].split(",") if n.strip()]
        old = {p.name: p for p in method.properties}
        changes["properties"] = tuple(old.get(n) or default_property(n) for n in names)
    if "group_by" in given:
        text = given["group_by"].strip()
        changes["group_by"] = () if text.lower() in ("", "none") else tuple(
            n.strip() for n in text.split(",") if n.strip())
    if given.get("global_fit"):
        changes["group_by"] = ()
    for key in ("medians", "space", "estimator", "pass_rule"):
        if key in given:
            changes[key] = given[key]
    for key in ("ratio", "validation_fraction", "max_spread", "stability_splits"):
        if key in given:
            changes[key] = parse_setting(key, given[key])
    if given.get("orthogonalize"):
        changes["orthogonalize"] = True
    svm = {key: given[flag] for flag, key in (("svm", "solver"), ("dual", "dual")) if flag in given}
    svm.update({key: parse_setting(f"svm.{key}", given[flag]) for flag, key in (("C", "C"), ("max_iter", "max_iter"))
                if flag in given})
    if given.get("scale"):
        svm["scale"] = True
    if svm:
        changes["svm"] = svm_settings(method.svm, svm)  # the checks a method file's svm table gets
    method = replace(method, **changes)  # validates: a bad value raises MethodError
    schedules = _schedules(given)
    if schedules:
        unknown = [n for n in schedules if n not in method.property_names]
        if unknown:
            raise UsageError(f"a schedule is given for {', '.join(unknown)}, which the method does not edit "
                             f"(it edits {', '.join(method.property_names)})")
        method = replace(method, properties=tuple(replace(p, schedule=schedules.get(p.name, p.schedule))
                                                  for p in method.properties))
    if "cutoffs" in given:
        method = method.with_cutoffs(parse_cutoffs(given["cutoffs"], method.property_names))
    return method


def _schedules(given: dict) -> dict[str, tuple[float, ...]]:
    out = {}
    for item in given.get("schedule", []):
        name, sep, values = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--schedule takes NAME=W1,W2,..., got {item!r}")
        out[name.strip()] = parse_floats(values, f"--schedule {name.strip()}")
    for name in SHORTHANDS:
        if name in given:
            out[name] = parse_floats(given[name], f"--{name}")
    return out


def parse_cutoffs(text: str, properties) -> dict[str, float]:
    """NAME=C,NAME=C or C,C,C (one per property, in the method's order); each number is read
    and bounded by vectors.method_values.parse_setting, as a cutoff in a method file is."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    named = [t for t in items if "=" in t]
    if named and len(named) != len(items):
        raise UsageError(f"--cutoffs mixes NAME=C and bare numbers: {text!r}")
    if named:
        pairs = [(n.strip(), v) for n, _, v in (t.partition("=") for t in items)]
        return {n: parse_setting("cutoff", v, n) for n, v in pairs}
    if len(items) != len(properties):
        raise UsageError(f"--cutoffs has {len(items)} numbers for {len(properties)} properties "
                         f"({', '.join(properties)}); give one per property or NAME=C pairs")
    return {n: parse_setting("cutoff", v, n) for n, v in zip(properties, items)}
