"""Linear SVM fits and the directions they give (SPEC.md steps 4-5).

`fit_direction` trains one classifier, top-k (label 1) against bottom-k (label 0), and
returns the normal vector as a unit direction in the original latent coordinates,
pointing toward *larger* scores. (The reference pointed its vectors toward the smaller
class, so its correlations came out negative; `vectors.interop` flips signs at the
boundary.) Convergence is recorded, never silenced.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from vectors.errors import InputError

log = logging.getLogger(__name__)

SOLVERS = ("linearsvc", "svc")
LIBLINEAR_SEED = 0  # seeds liblinear's coordinate descent, so that every fit repeats exactly


@dataclass(frozen=True)
class SvmConfig:
    """Defaults reproduce the reference: LinearSVC, C=1, unscaled inputs."""

    solver: str = "linearsvc"     # "linearsvc" (liblinear) or "svc" (kernel='linear'; sklearnex if present)
    C: float = 1.0
    scale: bool = False           # standardise each latent dim on the training set first
    dual: str = "auto"            # LinearSVC only: "auto", "true" or "false"
    max_iter: int = 1000

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise InputError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if not (isinstance(self.C, (int, float)) and self.C > 0):
            raise InputError(f"C must be > 0, got {self.C!r}")
        if self.dual not in ("auto", "true", "false"):
            raise InputError(f"dual must be auto, true or false, got {self.dual!r}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise InputError(f"max_iter must be >= 1, got {self.max_iter!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FitResult:
    direction: np.ndarray   # (D,) float32, unit norm, toward larger scores
    val_accuracy: float
    train_accuracy: float
    converged: bool
    fit_seconds: float
    solver: str             # what fitted it: the SVM solver, or the estimator's name for mean_diff and ridge
    stability: float = float("nan")  # mean pairwise cosine over resampled fits (vectors.estimators)
    c: float = float("nan")          # the SVM's C (svm_cv's chosen one); NaN where no SVM fitted it


def _svc_class():
    """scikit-learn-intelex's SVC where installed (x86), else scikit-learn's, with a note."""
    try:
        from sklearnex.svm import SVC
    except ImportError:
        from sklearn.svm import SVC

        log.warning("scikit-learn-intelex is not installed: solver 'svc' uses scikit-learn's SVC (slower)")
    return SVC


def _classifier(cfg: SvmConfig, random_state: int | None = None):
    if cfg.solver == "linearsvc":
        from sklearn.svm import LinearSVC

        dual = {"auto": "auto", "true": True, "false": False}[cfg.dual]
        return LinearSVC(C=cfg.C, dual=dual, max_iter=cfg.max_iter, random_state=random_state)
    return _svc_class()(kernel="linear", C=cfg.C, max_iter=cfg.max_iter)


@dataclass(frozen=True)
class TrainedSvm:
    """A fitted classifier with the input standardisation it was trained under."""

    model: object
    mean: np.ndarray        # (D,) subtracted before the model (zeros when unscaled)
    std: np.ndarray         # (D,) divided by before the model (ones when unscaled)
    direction: np.ndarray   # (D,) float64, unit norm, latent coordinates, toward label 1
    converged: bool
    seconds: float

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self.model.score((x - self.mean) / self.std, y))


def train_svm(x_pos: np.ndarray, x_neg: np.ndarray, cfg: SvmConfig = SvmConfig(),
              random_state: int | None = None) -> TrainedSvm:
    """One classifier, x_pos (label 1) against x_neg (label 0); `random_state` seeds liblinear's
    coordinate descent (None: NumPy's global generator, as the reference did)."""
    # Here, not at the top: every job and test-stage actor imports this module (for SvmConfig),
    # and only fits need scikit-learn, which takes about a second to import.
    from sklearn.exceptions import ConvergenceWarning

    x = np.concatenate([x_pos, x_neg]).astype(np.float64)
    y = np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))]
    mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    if cfg.scale:
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
    model = _classifier(cfg, random_state)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit((x - mean) / std, y)
    seconds = time.perf_counter() - started
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    # coef in scaled space c_s acts on (x - mean) / std: in latent coordinates it is c_s / std.
    normal = np.asarray(model.coef_, dtype=np.float64).reshape(-1) / std
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm == 0:
        raise InputError("the SVM found no separating direction (zero normal vector); the selected samples "
                         "do not differ in this space: check the scores or use a larger n")
    return TrainedSvm(model, mean, std, normal / norm, converged, seconds)


def fit_direction(x_pos: np.ndarray, x_neg: np.ndarray, v_pos: np.ndarray, v_neg: np.ndarray,
                  cfg: SvmConfig = SvmConfig(), random_state: int | None = None) -> FitResult:
    """Fit on training rows x_pos/x_neg (N, D); validate on v_pos/v_neg."""
    svm = train_svm(x_pos, x_neg, cfg, random_state)
    x = np.concatenate([x_pos, x_neg]).astype(np.float64)
    y = np.r_[np.ones(len(x_pos)), np.zeros(len(x_neg))]
    v = np.concatenate([v_pos, v_neg]).astype(np.float64)
    vy = np.r_[np.ones(len(v_pos)), np.zeros(len(v_neg))]
    return FitResult(
        direction=svm.direction.astype(np.float32),
        val_accuracy=svm.accuracy(v, vy), train_accuracy=svm.accuracy(x, y),
        converged=svm.converged, fit_seconds=svm.seconds, solver=cfg.solver,
    )


def orthogonalize(directions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each direction made orthogonal to the span of the others (in one group), unit norm.

    Moving along the result changes the others' linear scores not at all (InterFaceGAN's
    conditional manipulation, applied to every property at once).
    """
    out = {}
    for name, d in directions.items():
        others = np.stack([v for k, v in directions.items() if k != name], axis=1).astype(np.float64)
        basis, _ = np.linalg.qr(others)
        rest = d.astype(np.float64) - basis @ (basis.T @ d)
        norm = np.linalg.norm(rest)
        if norm < 1e-6:
            raise InputError(f"direction {name!r} lies in the span of the others; cannot orthogonalize")
        out[name] = (rest / norm).astype(np.float32)
    return out


def fit_selection(latents: np.ndarray, selection, cfg: SvmConfig = SvmConfig()) -> FitResult:
    """Fit one (group, property) Selection of vectors.groups on rows of `latents` (N, D).

    liblinear is seeded (LIBLINEAR_SEED): the reference left it to NumPy's global generator,
    so its reruns differed by up to ~1e-5 per component; ours repeat exactly."""
    s = selection
    return fit_direction(latents[s.train_pos], latents[s.train_neg], latents[s.val_pos], latents[s.val_neg], cfg,
                         LIBLINEAR_SEED)
