"""Directions in other tools' formats.

Reference CSV layout (one file per property and group):
    {property}_change_{space}_vector_{group}.csv, header ",0,1,...,D-1", one row "0,v0,...".
The reference's vectors point toward *smaller* scores; ours toward larger. Export flips
the sign back to the reference's convention and import flips it to ours.

InterFaceGAN boundary: {property}_{space}_{group}_boundary.npy, float32, shape (1, D),
unit norm, pointing toward larger scores (InterFaceGAN's own convention).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from compute.files import atomic_file
from vectors.names import file_name

SPACES = ("w", "z")
_CSV_NAME = re.compile(r"^(?P<prop>.+)_change_(?P<space>[wz])_vector_(?P<group>[hl]{1,4}|all)\.csv$")


def reference_csv_name(prop: str, space: str, group: str) -> str:
    """The file name, one path component (vectors.names.NameRefused for a name that would leave its directory)."""
    return file_name(f"{prop}_change_{space}_vector_{group}.csv", "reference CSV file name")


def write_reference_csv(direction: np.ndarray, path: Path) -> None:
    flipped = -np.asarray(direction, dtype=np.float64).reshape(-1)
    with atomic_file(path, "w", newline="") as f:  # never through a planted name or symlink
        writer = csv.writer(f)
        writer.writerow([""] + [str(i) for i in range(len(flipped))])
        writer.writerow(["0"] + [repr(float(v)) for v in flipped])


def read_reference_csv(path: Path) -> np.ndarray:
    """One reference vector, sign flipped to point toward larger scores, float32 (D,)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if len(rows) != 2 or rows[0][1:] != [str(i) for i in range(len(rows[0]) - 1)]:
        raise ValueError(f"{path} is not in the reference layout (header ',0,1,...', one data row)")
    try:
        values = np.array([float(v) for v in rows[1][1:]], dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric vector entry ({exc})") from exc
    if len(values) != len(rows[0]) - 1 or not np.isfinite(values).all():
        raise ValueError(f"{path}: the data row does not match the header or has non-finite values")
    return (-values).astype(np.float32)


def parse_reference_csv_name(name: str) -> tuple[str, str, str]:
    """(property, space, group) of a reference CSV file name."""
    match = _CSV_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not named {{property}}_change_{{w|z}}_vector_{{group}}.csv")
    return match["prop"], match["space"], match["group"]


def boundary_name(prop: str, space: str, group: str) -> str:
    """The file name, one path component (vectors.names.NameRefused for a name that would leave its directory)."""
    return file_name(f"{prop}_{space}_{group}_boundary.npy", "boundary file name")


def write_boundary(direction: np.ndarray, path: Path) -> None:
    d = np.asarray(direction, dtype=np.float64).reshape(1, -1)
    with atomic_file(path, "wb") as f:
        np.save(f, (d / np.linalg.norm(d)).astype(np.float32))
