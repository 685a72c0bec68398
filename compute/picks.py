"""The picks file: the faces a person ticked in the gallery, as jobs.render reads them.

The gallery's one download, `picks.csv`, one row per ticked case:

    case_id,group,bundle_sha256,w0,...,w{D-1}        (z0,...,z{D-1} for a --space z run)

the case's id in the run, the group it was tested in, the model bundle's manifest sha256
(64 hex digits) and its code, named by the code it is (w or z) and written as the exact
float32 values (the repr of each as a Python float), so a pick reads back bit-exact.

jobs.render also reads what it read before:

- the gallery's older `picks.csv`: `case_id,group,bundle,z0,...` (bundle: the sha256's
  first 16 hex digits; the columns were named z whatever the run's latent was, so only
  the code's length says which it is);
- the gallery's older `picks.json`: {"format": "vectorfind-picks", "version": 1,
  "bundle_manifest_sha256", "space", "run", "picks": [{"case_id", "group", "code"}]};
- the reference implementation's pair: a pandas-style CSV of z codes (header ",0,...,D-1",
  rows "i,v0,...") and optionally one of group names (header ",0", rows "i,hhl"). Its rows
  are no cases of ours; without the groups file the editor finds each face's group.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vectors.errors import InputError

PICKS_FILE = "picks.csv"
HEAD = ["case_id", "group", "bundle_sha256"]
OLD_HEAD = ["case_id", "group", "bundle"]      # the gallery's picks.csv before the columns said w or z
JSON_FORMAT, JSON_VERSION = "vectorfind-picks", 1
SHA256 = re.compile(r"[0-9a-f]{64}")


class PicksError(InputError):
    """A picks file that cannot be read, or that does not belong to this editor's run and model."""


@dataclass(frozen=True)
class Picks:
    path: Path
    case_ids: list[int]          # the run's case ids; the reference pair: its row labels
    groups: list[str] | None     # None: let the editor find them
    codes: np.ndarray            # (N, D) float32
    latent: str | None           # "w" or "z"; None: the file does not say (the older picks.csv)
    bundle_sha256: str | None    # all 64 hex digits, or the first 16 (older picks.csv); None: unknown
    ours: bool                   # False for the reference pair: its rows are no cases of the run


def csv_line(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)  # quotes a cell only where CSV needs it
    return out.getvalue()


def picks_lines(latent: str, bundle_sha256: str, case_ids, groups, codes: np.ndarray) -> tuple[str, dict[int, str]]:
    """The header of picks.csv and {case_id: its row}, for a page that writes the ticked rows."""
    header = csv_line(HEAD + [f"{latent}{i}" for i in range(codes.shape[1])])
    return header, {int(c): csv_line([str(int(c)), str(g), bundle_sha256] + [repr(float(x)) for x in code])
                    for c, g, code in zip(case_ids, groups, codes)}


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except UnicodeDecodeError as exc:
        raise PicksError(f"{path} is not a text CSV file ({exc.reason})") from exc
    except csv.Error as exc:
        raise PicksError(f"{path} is not a CSV file ({exc})") from exc
    if not rows:
        raise PicksError(f"{path} is empty")
    return rows[0], rows[1:]


def _floats(values: list[str], path: Path, line: int) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise PicksError(f"{path} line {line}: the code has a non-numeric entry") from None


def read_picks(path, groups_path=None) -> Picks:
    """Picks from the gallery's picks.csv (this layout or the older one), its older
    picks.json, or the reference's z-vectors CSV (with its group-names CSV when given)."""
    path = Path(path)
    if not path.is_file():
        raise PicksError(f"no picks file {path}")
    header, rows = (None, None) if path.suffix.lower() == ".json" else _csv_rows(path)
    if header is None or header[:3] in (HEAD, OLD_HEAD):
        if groups_path is not None:
            raise PicksError(f"--groups goes with the reference's z-vectors CSV; {path.name} names its groups")
        return _read_json(path) if header is None else _read_ours(path, header, rows)
    if header and header[0] == "" and header[1:] == [str(i) for i in range(len(header) - 1)]:
        labels, codes = _reference_rows(path, header, rows)
        groups = _reference_groups(Path(groups_path), labels) if groups_path is not None else None
        return Picks(path, labels, groups, codes, "z", None, False)
    raise PicksError(f"{path} is neither the gallery's picks.csv (case_id,group,bundle_sha256,w0,...) nor the "
                     f"reference's z-vectors CSV (,0,1,...)")


def _read_ours(path: Path, header: list[str], rows: list[list[str]]) -> Picks:
    old = header[:3] == OLD_HEAD
    latent = "z" if old else header[3][:1] if len(header) > 3 else ""
    if latent not in ("w", "z") or header[3:] != [f"{latent}{i}" for i in range(len(header) - 3)] or not rows:
        raise PicksError(f"{path}: expected the columns {','.join(header[:3])},w0,...,w{{D-1}} (or z0,...) "
                         f"and at least one pick")
    if any(len(r) != len(header) for r in rows):
        raise PicksError(f"{path}: rows have other lengths than the header's {len(header)} columns")
    try:
        ids = [int(r[0]) for r in rows]
    except ValueError:
        raise PicksError(f"{path}: case_id must be whole numbers") from None
    shas = {r[2].lower() for r in rows}
    if len(shas) != 1:
        raise PicksError(f"{path} mixes picks of several model bundles ({', '.join(sorted(shas))})")
    sha = shas.pop()
    if not (re.fullmatch(r"[0-9a-f]{16}", sha) if old else SHA256.fullmatch(sha)):
        raise PicksError(f"{path}: the {header[2]} column must hold the model bundle's manifest sha256 "
                         f"({16 if old else 64} hex digits)")
    codes = np.array([_floats(r[3:], path, i + 2) for i, r in enumerate(rows)], np.float32)
    # The older layout named its columns z whatever the run's latent: only the length tells.
    return Picks(path, ids, [r[1] for r in rows], codes, None if old else latent, sha, True)


def _read_json(path: Path) -> Picks:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PicksError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT or data.get("version") != JSON_VERSION:
        raise PicksError(f"{path} is not a {JSON_FORMAT} version {JSON_VERSION} file (the gallery's older picks.json)")
    picks, space, sha = data.get("picks"), data.get("space"), str(data.get("bundle_manifest_sha256")).lower()
    try:
        ids = [int(p["case_id"]) for p in picks]
        groups = [str(p["group"]) for p in picks]
        codes = np.array([[float(v) for v in p["code"]] for p in picks], np.float32)
    except (TypeError, KeyError, ValueError):
        raise PicksError(f"{path}: every pick needs case_id, group and a code of numbers of one length") from None
    if not ids:
        raise PicksError(f"{path} holds no picks")
    if codes.ndim != 2 or not SHA256.fullmatch(sha):
        raise PicksError(f"{path}: expected codes of one length and the bundle's manifest sha256 (64 hex digits)")
    latent = "z" if space == "z" else "w" if isinstance(space, str) and space.startswith("w") else None
    return Picks(path, ids, groups, codes, latent, sha, True)


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
    header, rows = _csv_rows(path)
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
