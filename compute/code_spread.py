"""Each direction's spread of projected codes: the std of (code . n) over a run's samples.

An edit of weight e moves a code by e along the unit direction n, so e means something only
next to how far codes already spread along n: +2 is a large edit where the samples' codes
have std 0.5 along n and a small one where they have std 5. The report gives this std per
(group, property) direction so that a schedule for a new generator can be chosen from it
(docs/method.md, "Choosing edit schedules").

The samples are read part by part (RUN/samples.parquet is a directory of chunk files) and
batch by batch within a part, one column only: memory stays bounded by a batch, not by n.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from compute import samples_store
from compute.storage import Place, as_place
from compute.tables import vector_matrix

BATCH_ROWS = 16_384  # rows per read: 32 MB of float32 codes at 512 dims


@dataclass
class CodeSpread:
    """std of code . n per (group, property) direction over `rows` finite samples; or, where
    no samples could be used, `std` empty and `note` saying why."""

    std: dict[tuple[str, str], float]
    rows: int
    source: Place | None
    note: str = ""


class _Moments:
    """Running mean and sum of squared deviations per column (Chan et al.'s pairwise update),
    so that chunks of any size combine exactly and a large mean does not cancel the spread."""

    def __init__(self, columns: int):
        self.count, self.mean, self.m2 = 0, np.zeros(columns), np.zeros(columns)

    def add(self, values: np.ndarray) -> None:
        n = len(values)
        if n == 0:
            return
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count) if self.count else np.full(len(self.mean), np.nan)


def projected_std(path: Place, latent: str, directions: dict[tuple[str, str], np.ndarray]) -> tuple[dict, int]:
    """({(group, property): std of code . n}, rows used) over the finite codes of the samples
    table at `path`, column `latent`. Raises ValueError for a table whose column does not hold
    codes of the directions' dimension."""
    keys = sorted(directions)
    matrix = np.stack([np.asarray(directions[k], np.float64) for k in keys], axis=1)  # (D, K)
    moments = _Moments(len(keys))
    for part in samples_store.parts(path):
        with samples_store.open_part(part) as file:
            field = file.schema_arrow.field(latent) if latent in file.schema_arrow.names else None
            if field is None or not pa.types.is_fixed_size_list(field.type) or field.type.list_size != len(matrix):
                raise ValueError(f"{part.name} has no {latent} column of {len(matrix)}-dim codes")
            for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=[latent]):
                codes = vector_matrix(batch.column(0)).astype(np.float64)
                codes = codes[np.isfinite(codes).all(axis=1)]  # the fit drops such rows too
                moments.add(codes @ matrix)
    return dict(zip(keys, moments.std().tolist())), moments.count


def code_spread(candidates: list[Place | Path], bundle_sha256: str | None, latent: str,
                directions: dict[tuple[str, str], np.ndarray]) -> CodeSpread:
    """The spread over the first candidate samples table drawn from the same bundle (its
    manifest hash) as the tested directions; codes of another model say nothing about these."""
    seen = []
    for path in {p.key(): p for p in map(as_place, candidates)}.values():  # each table once
        if not samples_store.exists(path):
            continue
        try:
            sampled = samples_store.metadata(path).get("sampling", {}).get("bundle_manifest_sha256")
            if bundle_sha256 and sampled != bundle_sha256:
                seen.append(f"{path} holds samples of another bundle")
                continue
            std, rows = projected_std(path, latent, directions)
        except Exception as exc:  # a damaged or foreign table: no figure, and the reason
            seen.append(f"{path} could not be read ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})")
            continue
        if rows:
            return CodeSpread(std, rows, path)
        seen.append(f"{path} holds no finite codes")
    note = "; ".join(seen) if seen else "no samples beside the run or its vectors"
    return CodeSpread({}, 0, None, note)
