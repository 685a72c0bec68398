"""Direction estimators: the ways one (group, property) fit can turn latents into a unit
direction, and the stability of what each one finds. Pure NumPy and scikit-learn.

Every estimator sees the same selection (vectors.groups.Selection: the group's top-k and
bottom-k rows, each class split into training and validation rows by the method's
validation fraction, "80/20" below) and returns a FitResult whose direction points toward
*larger* scores:

- `svm`: the reference. LinearSVC (the method's SvmConfig) on the training rows, scored
  on the validation rows; exactly `vectors.svm.fit_selection`.
- `svm_refit`: `svm` for the validation accuracy, then the same classifier refitted on
  all selected rows (training and validation); the direction is the refit's.
- `bagged_svm`: the normalised mean of the unit normals of BAGS classifiers, each fitted
  on the training rows of one seeded 80/20 split of the training rows.
- `svm_cv`: C picked from CV_GRID by accuracy on a seeded inner 80/20 split of the
  training rows (ties go to the smaller C), then `svm` with that C.
- `mean_diff`: the difference of the class means of the training rows.
- `ridge`: ridge regression of the standardised score on the centred latents of every
  row of the group except the validation rows; the direction is the coefficient vector.
  The penalty is RIDGE_ALPHA times the mean eigenvalue of X^T X (its trace / D), so the
  same setting shrinks alike in w and z and at every n.

Estimators without a classifier of their own (bagged_svm, mean_diff, ridge) report the
validation accuracy of a projection rule: positive where the projection exceeds the
midpoint of the projected training class means. mean_diff and ridge ignore the SVM
settings. Every classifier seeds liblinear with LIBLINEAR_SEED, so only the row splits
are random, and those come from `random_state`.

**Stability** is the mean pairwise cosine of the directions the estimator's rule learns
from B seeded resamples of its data: for the classifiers, the training rows of B fresh
80/20 splits of the selected rows (svm and svm_refit share a rule, so their stability is
the same); for ridge, B subsamples of the group's rows of the same share. It costs B more
applications of the rule: B SVM fits for svm, 5B for bagged_svm and svm_cv.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import replace
from functools import partial

import numpy as np

from vectors.errors import InputError
from vectors.svm import LIBLINEAR_SEED, FitResult, SvmConfig, fit_direction, fit_selection, train_svm

ESTIMATORS = ("svm", "svm_refit", "bagged_svm", "svm_cv", "mean_diff", "ridge")
CV_GRID = (0.01, 0.1, 1.0, 10.0)   # svm_cv's candidate C values
BAGS = 5                           # bagged_svm's classifiers
RIDGE_ALPHA = 1.0                  # ridge's penalty on |coef|^2, in units of trace(X^T X) / D
MAX_STABILITY_SPLITS = 100
_PURPOSES = ("fit", "stability")


def check_estimator(name) -> str:
    if name not in ESTIMATORS:
        raise InputError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}")
    return name


def fit_stream(seed: int, selection, purpose: str) -> np.random.SeedSequence:
    """The random stream of one (group, property) fit for one purpose ("fit" or
    "stability"): a function of the seed and the group and property names only, so it does
    not depend on which worker runs the fit, or on what runs before it."""
    names = (zlib.crc32(selection.group.encode()), zlib.crc32(selection.prop.encode()))
    return np.random.SeedSequence([seed, *names, _PURPOSES.index(purpose)])


def split_classes(pos: np.ndarray, neg: np.ndarray, n_val: int, rng: np.random.Generator):
    """(train_pos, train_neg, val_pos, val_neg): each class permuted by `rng`, its first n_val
    rows held out; the rule of vectors.groups.select."""
    pos, neg = rng.permutation(pos), rng.permutation(neg)
    return pos[n_val:], neg[n_val:], pos[:n_val], neg[:n_val]


def _held_out(fraction: float, k: int) -> int:
    """Rows of k held out at this fraction: at least 1, and at least 1 left to learn from."""
    return min(max(1, int(round(fraction * k))), k - 1)


def projection_accuracy(direction: np.ndarray, train_pos: np.ndarray, train_neg: np.ndarray,
                        x_pos: np.ndarray, x_neg: np.ndarray) -> float:
    """Share of x_pos (N, D) projecting above, and of x_neg at or below, the midpoint of the
    projected training class means."""
    d = np.asarray(direction, dtype=np.float64)
    threshold = ((train_pos @ d).mean() + (train_neg @ d).mean()) / 2
    return float(((x_pos @ d > threshold).sum() + (x_neg @ d <= threshold).sum()) / (len(x_pos) + len(x_neg)))


def mean_pairwise_cosine(directions) -> float:
    """Mean cosine over all pairs of (B, D) directions; NaN for B < 2. Computed as
    1 - |a - b|^2 / 2 on unit vectors: exactly 1 for identical ones, and accurate near 1."""
    d = np.asarray(directions, dtype=np.float64)
    if len(d) < 2:
        return float("nan")
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    i, j = np.triu_indices(len(d), 1)
    return float(np.mean(1 - 0.5 * ((d[i] - d[j]) ** 2).sum(axis=1)))


# ---- rules: (x_pos, x_neg, cfg, rng, held-out fraction) -> (unit float64 direction, converged)
def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise InputError(f"the {what} is a zero vector: the selected samples do not differ in this space; "
                         f"check the scores or use a larger n")
    return v / norm


def _svm(x_pos, x_neg, cfg: SvmConfig, rng, fraction):
    svm = train_svm(x_pos, x_neg, cfg, LIBLINEAR_SEED)
    return svm.direction, svm.converged


def _bagged(x_pos, x_neg, cfg: SvmConfig, rng, fraction):
    n_val = _held_out(fraction, len(x_pos))
    fits = [train_svm(*split_classes(x_pos, x_neg, n_val, rng)[:2], cfg, LIBLINEAR_SEED) for _ in range(BAGS)]
    return _unit(np.mean([f.direction for f in fits], axis=0), "mean of the bagged normals"), \
        all(f.converged for f in fits)


def choose_c(x_pos, x_neg, cfg: SvmConfig, rng, fraction: float) -> float:
    """svm_cv's C: the CV_GRID value with the best accuracy on one inner split (the smaller C on ties)."""
    tp, tn, vp, vn = split_classes(x_pos, x_neg, _held_out(fraction, len(x_pos)), rng)
    v, vy = np.concatenate([vp, vn]), np.r_[np.ones(len(vp)), np.zeros(len(vn))]
    accuracy = [train_svm(tp, tn, replace(cfg, C=c), LIBLINEAR_SEED).accuracy(v, vy) for c in CV_GRID]
    return CV_GRID[int(np.argmax(accuracy))]


def _cv(x_pos, x_neg, cfg: SvmConfig, rng, fraction):
    return _svm(x_pos, x_neg, replace(cfg, C=choose_c(x_pos, x_neg, cfg, rng, fraction)), rng, fraction)


def _mean_diff(x_pos, x_neg, cfg: SvmConfig, rng, fraction):
    return _unit(x_pos.mean(axis=0) - x_neg.mean(axis=0), "difference of the class means"), True


def ridge_direction(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """Unit coefficient vector of (X^T X + lam I)^-1 X^T y on centred X (M, D) and standardised
    y (M,), where lam = alpha * trace(X^T X) / D."""
    x = x - x.mean(axis=0)
    spread = y.std()
    if not spread > 0:
        raise InputError("ridge needs scores that vary within the group; these are constant")
    y = (y - y.mean()) / spread
    scatter = x.T @ x
    penalty = alpha * np.trace(scatter) / x.shape[1]
    coef = np.linalg.solve(scatter + penalty * np.eye(x.shape[1]), x.T @ y)
    return _unit(coef, "ridge coefficient vector")


_CLASSIFIER_RULES = {"svm": _svm, "svm_refit": _svm, "bagged_svm": _bagged, "svm_cv": _cv, "mean_diff": _mean_diff}


def _held_out_share(selection, scores, estimator: str) -> float:
    """The selection's validation share, after checking ridge has what it regresses on."""
    if estimator == "ridge" and (scores is None or selection.rows is None):
        raise InputError("the ridge estimator regresses the score on every sample of the group: it needs "
                         "the scores and the group's rows")
    return len(selection.val_pos) / selection.k


def _float_rows(latents: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return latents[rows].astype(np.float64)


# ---- the estimators -------------------------------------------------------------------
def fit_estimator(latents: np.ndarray, selection, scores: np.ndarray | None = None, estimator: str = "svm",
                  cfg: SvmConfig = SvmConfig(), random_state=None) -> FitResult:
    """One direction for one selection. latents (N, D) and scores (N,) are indexed by the
    selection's rows; scores are needed by ridge only; random_state seeds the row splits."""
    check_estimator(estimator)
    s = selection
    if estimator == "svm":
        return replace(fit_selection(latents, s, cfg), c=cfg.C)
    fraction, x = _held_out_share(s, scores, estimator), partial(_float_rows, latents)
    rng = np.random.default_rng(random_state)
    started = time.perf_counter()
    if estimator == "svm_refit":
        validated = fit_selection(latents, s, cfg)
        direction, converged = _svm(x(np.r_[s.train_pos, s.val_pos]), x(np.r_[s.train_neg, s.val_neg]),
                                    cfg, rng, fraction)
        return replace(validated, direction=direction.astype(np.float32), converged=validated.converged and converged,
                       fit_seconds=time.perf_counter() - started, c=cfg.C)
    if estimator == "svm_cv":
        c = choose_c(x(s.train_pos), x(s.train_neg), cfg, rng, fraction)
        fit = fit_direction(x(s.train_pos), x(s.train_neg), x(s.val_pos), x(s.val_neg), replace(cfg, C=c),
                            LIBLINEAR_SEED)
        return replace(fit, fit_seconds=time.perf_counter() - started, c=c)
    if estimator == "ridge":
        held_out = np.r_[s.val_pos, s.val_neg]
        rows = s.rows[~np.isin(s.rows, held_out)]
        direction, converged = ridge_direction(x(rows), np.asarray(scores, np.float64)[rows]), True
    else:
        direction, converged = _CLASSIFIER_RULES[estimator](x(s.train_pos), x(s.train_neg), cfg, rng, fraction)
    tp, tn = x(s.train_pos), x(s.train_neg)
    return FitResult(direction=direction.astype(np.float32),
                     val_accuracy=projection_accuracy(direction, tp, tn, x(s.val_pos), x(s.val_neg)),
                     train_accuracy=projection_accuracy(direction, tp, tn, tp, tn), converged=converged,
                     fit_seconds=time.perf_counter() - started,
                     solver=estimator if estimator in ("mean_diff", "ridge") else cfg.solver,
                     c=float("nan") if estimator in ("mean_diff", "ridge") else cfg.C)


def resampled_directions(latents: np.ndarray, selection, scores: np.ndarray | None = None, estimator: str = "svm",
                         cfg: SvmConfig = SvmConfig(), splits: int = 5, random_state=None) -> list[np.ndarray]:
    """The estimator's rule learned on `splits` seeded resamples of its data (see the module
    docstring); each a unit (D,) float64 direction."""
    check_estimator(estimator)
    s = selection
    fraction, x = _held_out_share(s, scores, estimator), partial(_float_rows, latents)
    rng = np.random.default_rng(random_state)
    out = []
    for _ in range(splits):
        if estimator == "ridge":
            rows = np.sort(rng.permutation(s.rows)[_held_out(fraction, len(s.rows)):])
            out.append(ridge_direction(x(rows), np.asarray(scores, np.float64)[rows]))
            continue
        pos, neg = np.sort(np.r_[s.train_pos, s.val_pos]), np.sort(np.r_[s.train_neg, s.val_neg])
        train_pos, train_neg, _, _ = split_classes(pos, neg, len(s.val_pos), rng)
        out.append(_CLASSIFIER_RULES[estimator](x(train_pos), x(train_neg), cfg, rng, fraction)[0])
    return out


def stability(latents: np.ndarray, selection, scores: np.ndarray | None = None, estimator: str = "svm",
              cfg: SvmConfig = SvmConfig(), splits: int = 5, seed: int = 0) -> float:
    """Mean pairwise cosine of the directions learned on `splits` resamples drawn from
    (seed, group, property); NaN when splits < 2 (disabled)."""
    if not (isinstance(splits, int) and 0 <= splits <= MAX_STABILITY_SPLITS):
        raise InputError(f"stability splits must be an integer in [0, {MAX_STABILITY_SPLITS}], got {splits!r}")
    if splits < 2:
        return float("nan")
    return mean_pairwise_cosine(resampled_directions(latents, selection, scores, estimator, cfg, splits,
                                                     fit_stream(seed, selection, "stability")))


def fit_and_measure(latents: np.ndarray, scores: dict | None, selection, estimator: str = "svm",
                    cfg: SvmConfig = SvmConfig(), splits: int = 0, seed: int = 0) -> FitResult:
    """The fit stage's unit of work (one Ray task): the estimator's fit, then its stability.
    scores: {score name: (N,)} or None; each part draws from its own stream of (seed, group,
    property), so the result does not depend on worker count or order."""
    values = None if scores is None else scores[selection.prop]
    fit = fit_estimator(latents, selection, values, estimator, cfg, fit_stream(seed, selection, "fit"))
    return replace(fit, stability=stability(latents, selection, values, estimator, cfg, splits, seed))
