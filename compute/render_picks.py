"""Render picked faces through an editor (compute.editor) with chosen property weights.

Picks come in three layouts:

- `picks.csv` from the gallery: header `case_id,group,bundle,z0,...,z{D-1}`; bundle is the
  first 16 hex digits of the model bundle's manifest sha256; the code is the run's latent
  (z for v6 runs, w for v7; the columns are named z0.. either way);
- `picks.json` from the gallery: {"format": "vectorfind-picks", "version": 1,
  "bundle_manifest_sha256", "space", "run", "picks": [{"case_id", "group", "code"}]};
- the reference implementation's pair: a pandas-style CSV of z codes (header ",0,...,D-1",
  rows "i,v0,...") and optionally one of group names (header ",0", rows "i,hhl"). Its rows
  are no cases of ours; without the groups file the editor finds each face's group.

A face keeps the group it was picked with (passed to the editor as an index).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from compute.editor import Editor
from compute.files import atomic_file
from compute.plots import to_rgb
from compute.tables import vector_matrix
from vectors.errors import InputError
from vectors.names import file_name

PICKS_FORMAT, PICKS_VERSION = "vectorfind-picks", 1
GAP = 2      # white pixels between the frames of a sweep


class PicksError(InputError):
    """A picks file that cannot be read, or that does not belong to this editor's run and model."""


@dataclass(frozen=True)
class Picks:
    path: Path
    case_ids: list[int]          # the run's case ids; the reference pair: its row labels
    groups: list[str] | None     # None: let the editor find them
    codes: np.ndarray            # (N, D) float32
    bundle_sha256: str | None    # full (json) or its first 16 hex digits (csv); None: unknown
    ours: bool                   # False for the reference pair: its rows are no cases of the run


def _number_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except UnicodeDecodeError as exc:
        raise PicksError(f"{path} is not a text CSV file ({exc.reason})") from exc
    if not rows:
        raise PicksError(f"{path} is empty")
    return rows[0], rows[1:]


def _floats(values: list[str], path: Path, line: int) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise PicksError(f"{path} line {line}: the code has a non-numeric entry") from None


def read_picks(path, groups_path=None) -> Picks:
    """Picks from the gallery's picks.csv or picks.json, or the reference's z-vectors CSV
    (with its group-names CSV when given)."""
    path = Path(path)
    if not path.is_file():
        raise PicksError(f"no picks file {path}")
    if path.suffix.lower() == ".json":
        if groups_path is not None:
            raise PicksError("--groups goes with the reference's z-vectors CSV; picks.json names its groups")
        return _read_json(path)
    header, rows = _number_rows(path)
    if header[:3] == ["case_id", "group", "bundle"]:
        if groups_path is not None:
            raise PicksError("--groups goes with the reference's z-vectors CSV; picks.csv names its groups")
        if header[3:] != [f"z{i}" for i in range(len(header) - 3)] or not rows:
            raise PicksError(f"{path}: expected the columns case_id,group,bundle,z0,...,z{{D-1}} and at least one pick")
        if any(len(r) != len(header) for r in rows):
            raise PicksError(f"{path}: rows have other lengths than the header's {len(header)} columns")
        try:
            ids = [int(r[0]) for r in rows]
        except ValueError:
            raise PicksError(f"{path}: case_id must be whole numbers") from None
        codes = [_floats(r[3:], path, i + 2) for i, r in enumerate(rows)]
        shas = {r[2] for r in rows}
        if len(shas) != 1:
            raise PicksError(f"{path} mixes picks of several model bundles ({', '.join(sorted(shas))})")
        return Picks(path, ids, [r[1] for r in rows], np.array(codes, np.float32), shas.pop(), True)
    if header and header[0] == "" and header[1:] == [str(i) for i in range(len(header) - 1)]:
        labels, codes = _reference_rows(path, header, rows)
        groups = _reference_groups(Path(groups_path), labels) if groups_path is not None else None
        return Picks(path, labels, groups, codes, None, False)
    raise PicksError(f"{path} is neither the gallery's picks.csv (case_id,group,bundle,z0,...) nor the "
                     f"reference's z-vectors CSV (,0,1,...)")


def _read_json(path: Path) -> Picks:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PicksError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != PICKS_FORMAT or data.get("version") != PICKS_VERSION:
        raise PicksError(f"{path} is not a {PICKS_FORMAT} version {PICKS_VERSION} file (the gallery's picks.json)")
    picks = data.get("picks")
    try:
        ids = [int(p["case_id"]) for p in picks]
        groups = [str(p["group"]) for p in picks]
        codes = np.array([[float(v) for v in p["code"]] for p in picks], np.float32)
    except (TypeError, KeyError, ValueError):
        raise PicksError(f"{path}: every pick needs case_id, group and a code of numbers of one length") from None
    if not ids:
        raise PicksError(f"{path} holds no picks")
    return Picks(path, ids, groups, codes, str(data.get("bundle_manifest_sha256")), True)


def _reference_rows(path: Path, header: list[str], rows: list[list[str]]) -> tuple[list[int], np.ndarray]:
    if not rows or any(len(r) != len(header) for r in rows):
        raise PicksError(f"{path}: expected rows 'i,v0,...,v{len(header) - 2}' under its header")
    try:
        labels = [int(r[0]) for r in rows]
    except ValueError:
        raise PicksError(f"{path}: the first column must be the row index") from None
    return labels, np.array([_floats(r[1:], path, i + 2) for i, r in enumerate(rows)], np.float32)


def _reference_groups(path: Path, labels: list[int]) -> list[str]:
    if not path.is_file():
        raise PicksError(f"no group names file {path}")
    header, rows = _number_rows(path)
    if header != ["", "0"] or any(len(r) != 2 for r in rows):
        raise PicksError(f"{path}: expected the reference's group names CSV (header ',0', rows 'i,hhl')")
    try:
        named = {int(r[0]): r[1] for r in rows}
    except ValueError:
        raise PicksError(f"{path}: the first column must be the row index") from None
    missing = [i for i in labels if i not in named]
    if missing:
        raise PicksError(f"{path} names no group for rows {', '.join(map(str, missing[:5]))} of the codes file")
    return [named[i] for i in labels]


def check_picks(picks: Picks, editor: Editor) -> list[str]:
    """Refuses picks this editor cannot render faithfully (other dims, another model bundle,
    unknown groups); returns warning lines for faces it renders but cannot trace to its run."""
    m = editor.manifest
    dim, name = picks.codes.shape[1], picks.path.name
    if dim != m["code_dim"]:
        kind = "z codes (the reference's)" if not picks.ours else "codes"
        raise PicksError(f"{name} holds {dim}-dim {kind}; this editor edits {m['latent']} codes of {m['code_dim']} "
                         f"dims (space {m['space']})" + ("; export an editor from a --space z run for them"
                                                         if not picks.ours and m["latent"] != "z" else ""))
    source = m["source_bundle"]["manifest_sha256"]
    if picks.bundle_sha256 is not None and not source.startswith(picks.bundle_sha256.lower()):
        raise PicksError(f"{name} was picked on the model bundle {picks.bundle_sha256[:16]}, this editor's is "
                         f"{source[:16]}; use the editor of the picks' run")
    unknown = sorted({g for g in picks.groups or [] if g not in editor.groups})
    if unknown:
        raise PicksError(f"{name} names groups {', '.join(unknown)}, the editor has {', '.join(editor.groups)}")
    if not picks.ours:
        return []
    cases_file = Path(m["cases_file"])
    if not cases_file.is_file():
        return [f"the editor's run {m['source_run']} is gone: case ids and codes of {name} are not checked"]
    cases = pq.read_table(cases_file, columns=["case_id", m["latent"]])
    row = {c: i for i, c in enumerate(cases["case_id"].to_pylist())}
    # The picks carry their own codes, so a face from another run of the same bundle still
    # renders faithfully; it only cannot be traced back to this run's test results.
    warnings, missing = [], [c for c in picks.case_ids if c not in row]
    if missing:
        warnings.append(f"{name} names case(s) {', '.join(map(str, missing[:5]))} that the editor's run "
                        f"{m['source_run']} does not have: they are drawn from the codes in {name}")
    present = [c for c in picks.case_ids if c in row]
    stored = vector_matrix(cases[m["latent"]])[[row[c] for c in present]]
    codes = picks.codes[[i for i, c in enumerate(picks.case_ids) if c in row]]
    wrong = [c for c, a, b in zip(present, codes, stored) if not np.array_equal(a, b)]
    if wrong:
        warnings.append(f"the codes of case(s) {', '.join(map(str, wrong[:5]))} in {name} differ from the run's "
                        f"({m['source_run']}): they are drawn from the codes in {name}")
    return warnings


def parse_weights(text: str | None, editor: Editor) -> tuple[dict[str, float], list[str]]:
    """{property: weight} from "eyes=0.8,mouth=-0.5" (unset ones 0), and a warning line per
    weight outside the property's tested range."""
    weights = {p: 0.0 for p in editor.property_names}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, value = (t.strip() for t in item.partition("="))
        if name not in weights:
            raise PicksError(f"the editor has no property {name!r} (it edits {', '.join(editor.property_names)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise PicksError(f"--set {item!r}: expected NAME=NUMBER") from None
        if not np.isfinite(weights[name]):
            raise PicksError(f"--set {item!r}: the weight must be a finite number")
    return weights, [out_of_range(p, weights[p["name"]]) for p in editor.manifest["properties"]
                     if not p["min"] <= weights[p["name"]] <= p["max"]]


def out_of_range(prop: dict, value: float) -> str:
    return (f"{prop['name']}={value:g} is outside its tested range [{prop['min']:g}, {prop['max']:g}]: "
            f"the run never checked edits that far")


def render_picks(editor: Editor, picks: Picks, weights: dict[str, float], out: Path, sweep: str | None = None,
                 steps: int = 7, threads: int = 2) -> list[Path]:
    """One PNG per face (case_{id}.png), or with `sweep` one strip per face over that
    property's tested range (case_{id}_{sweep}.png); every image is drawn before any file
    is written."""
    names = editor.property_names
    if sweep is not None and sweep not in names:
        raise PicksError(f"--sweep {sweep}: the editor has no property {sweep!r} (it edits {', '.join(names)})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise PicksError(f"--steps must be a whole number >= 2, got {steps!r}")
    frames = np.array([[weights[p] for p in names]], np.float32)                   # (F, P)
    if sweep is not None:
        prop = next(p for p in editor.manifest["properties"] if p["name"] == sweep)
        frames = np.repeat(frames, steps, axis=0)
        frames[:, names.index(sweep)] = np.linspace(prop["min"], prop["max"], steps)
    groups = np.array([editor.groups.index(g) for g in picks.groups] if picks.groups else [-1] * len(picks.codes))
    codes = np.repeat(picks.codes, len(frames), axis=0)
    rows = (np.tile(frames, (len(picks.codes), 1)), np.repeat(groups, len(frames)))
    session = editor.session(threads=threads)
    images = editor.run(session, codes, *rows)[0]  # in memory-bounded calls
    images = images.reshape(len(picks.codes), len(frames), *images.shape[1:])
    pictures = {}
    for case_id, face in zip(picks.case_ids, images):
        strip = [to_rgb(f) for f in face]
        gap = np.ones((strip[0].shape[0], GAP, 3))
        pictures[file_name(f"case_{case_id}" + (f"_{sweep}" if sweep else "") + ".png", "picture file name")] = \
            np.concatenate([x for f in strip for x in (f, gap)][:-1], axis=1)
    return _write_pngs(Path(out), pictures)


def _write_pngs(out: Path, pictures: dict[str, np.ndarray]) -> list[Path]:
    from matplotlib.image import imsave

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rgb in pictures.items():
        with atomic_file(out / name, "wb") as f:
            imsave(f, rgb, format="png")
        written.append(out / name)
    return written
