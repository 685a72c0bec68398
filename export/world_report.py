"""Measure the synthetic world: how linear each true property is in w and in z, and how far
each group's best direction turns away from the global one.

    python -m export.world_report [--n 20000] [--seed 0]

Prints held-out R^2 of a least-squares linear fit from w and from z (515 dims with the
label) to each true parameter, and for eyes, mouth and pose the cosine between each
group's least-squares direction in w and the global one.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from export.world import EDITED, GROUPING, LABEL_DIM, PARAMS, Z_DIM, build_world

GROUP_NAMES = [a + b + c for a in "hl" for b in "hl" for c in "hl"]  # hhh, hhl, ..., lll


def group_index(params: np.ndarray, medians=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Group number 0..7 (GROUP_NAMES order) from the three grouping parameters."""
    cols = [PARAMS.index(g) for g in GROUPING]
    letters = params[:, cols] < np.asarray(medians)  # 'l' -> 1
    return letters[:, 0] * 4 + letters[:, 1] * 2 + letters[:, 2]


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def heldout_r2(x: np.ndarray, y: np.ndarray, train_fraction: float = 0.75) -> np.ndarray:
    split = int(len(x) * train_fraction)
    coef = _lstsq(x[:split], y[:split])
    pred = np.c_[x[split:], np.ones(len(x) - split)] @ coef
    return 1 - ((pred - y[split:]) ** 2).mean(0) / y[split:].var(0)


def measure(n: int = 20000, seed: int = 0) -> dict:
    mapping, readout = build_world()
    z = torch.randn(n, Z_DIM + LABEL_DIM, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w = mapping(z)
        params = readout(w).numpy()
    z, w = z.numpy().astype(np.float64), w.numpy().astype(np.float64)
    r2_w, r2_z = heldout_r2(w, params), heldout_r2(z, params)
    groups = group_index(params)
    cosines = {}
    for name in EDITED:
        y = params[:, PARAMS.index(name)]
        glob = _lstsq(w, y)[:-1]
        glob /= np.linalg.norm(glob)
        per_group = []
        for g in range(8):
            d = _lstsq(w[groups == g], y[groups == g])[:-1]
            per_group.append(float(d @ glob / np.linalg.norm(d)))
        cosines[name] = per_group
    return {"n": n, "r2_w": dict(zip(PARAMS, r2_w.tolist())), "r2_z": dict(zip(PARAMS, r2_z.tolist())),
            "group_sizes": np.bincount(groups, minlength=8).tolist(), "cosines": cosines}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 2000:
        p.error("--n must be >= 2000 (each group needs well over 512 samples for its fit)")
    m = measure(args.n, args.seed)
    print(f"held-out R^2 of a linear fit to each true parameter (n = {m['n']}):")
    print(f"  {'parameter':16s} {'from w':>7s} {'from z':>7s}")
    for name in PARAMS:
        print(f"  {name:16s} {m['r2_w'][name]:7.3f} {m['r2_z'][name]:7.3f}")
    print("cosine between each group's least-squares direction in w and the global one:")
    print(f"  {'':8s}" + "".join(f"{g:>6s}" for g in GROUP_NAMES))
    for name, values in m["cosines"].items():
        print(f"  {name:8s}" + "".join(f"{v:6.2f}" for v in values))
    print("  group sizes " + " ".join(f"{g}={s}" for g, s in zip(GROUP_NAMES, m["group_sizes"])))


if __name__ == "__main__":
    main()
