"""Export a generator + scorer pair to a bundle by name: the torch side of `jobs.export`
and of the built-in model's first-use export.

    synthetic, synthetic-attributes  the built-in world (export/synthetic.py, export/attributes.py)
    synthetic-hard                   the harder world, calibrated to the seeds' figures (export.world.HARD_WORLD)
    ohlora                           the reference's genforce StyleGAN and Property Score CNN
    stylegan2                        any StyleGAN checkpoint: rosinality .pt, NVIDIA .pkl, genforce .pth
                                     (export/checkpoint_specs.py), with an ONNX or CNN scorer
    onnx                             the user's own three ONNX graphs (export/onnx_user.py)

Each model takes some of the options; one that is given but does not belong, or that is
required and missing, is one error naming it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from export.checkpoints import CheckpointError
from export.onnx_bundle import ExportError, export_bundle
from export.scorer_adapter import ScorerAdapter

MODELS = ("synthetic", "synthetic-hard", "synthetic-attributes", "ohlora", "stylegan2", "onnx")


class ModelError(ExportError):
    """Options that do not fit the chosen model, or a model that could not be exported."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything `jobs.export` can pass; each model reads the options it takes (OPTIONS)."""

    resolution: int | None = None        # the synthetic models: image size
    weights: Path | None = None          # synthetic, synthetic-hard: scorer weights
    generator: Path | None = None        # ohlora, stylegan2: the generator checkpoint
    scorer: Path | None = None           # ohlora, stylegan2, onnx: the scorer (ONNX or Property Score CNN)
    score_names: tuple[str, ...] | None = None  # the scorer's output columns in order
    adapter: ScorerAdapter | None = None  # preprocessing in front of the scorer
    truncation: float | None = None      # stylegan2: psi toward the average w
    median_samples: int | None = None    # seeded samples the default group medians are measured on
    mapping: Path | None = None          # onnx: the mapping graph
    synthesis: Path | None = None        # onnx: the synthesis graph

    def given(self) -> set[str]:
        return {f.name for f in fields(self) if getattr(self, f.name) is not None}


OPTIONS = {
    "synthetic": {"resolution", "weights"},
    "synthetic-hard": {"resolution", "weights"},
    "synthetic-attributes": {"resolution"},
    "ohlora": {"generator", "scorer"},
    "stylegan2": {"generator", "scorer", "score_names", "adapter", "truncation", "median_samples"},
    "onnx": {"mapping", "synthesis", "scorer", "score_names", "adapter", "median_samples"},
}
REQUIRED = {"ohlora": {"generator", "scorer"}, "stylegan2": {"generator", "scorer"},
            "onnx": {"mapping", "synthesis", "scorer", "score_names"}}
FLAG = {"adapter": "scorer-size/--scorer-range/--scorer-mean/--scorer-std"}


def _flag(name: str) -> str:
    return "--" + FLAG.get(name, name.replace("_", "-"))


def check_model_options(model: str, options: ExportOptions) -> None:
    if model not in MODELS:
        raise ModelError(f"unknown model {model!r}; choose from: {', '.join(MODELS)}")
    stray = sorted(options.given() - OPTIONS[model])
    if stray:
        takes = ", ".join(_flag(o) for o in sorted(OPTIONS[model])) or "nothing else"
        raise ModelError(f"{', '.join(_flag(o) for o in stray)} do(es) not apply to --model {model}, "
                         f"which takes {takes}")
    missing = sorted(REQUIRED.get(model, set()) - options.given())
    if missing:
        raise ModelError(f"--model {model} needs {', '.join(_flag(o) for o in missing)}")
    if options.resolution is not None and (options.resolution < 64 or options.resolution % 64):
        raise ModelError(f"resolution must be a positive multiple of 64, got {options.resolution}")
    if options.median_samples is not None and options.median_samples < 1:
        raise ModelError(f"--median-samples must be at least 1, got {options.median_samples}")


def export_model(model: str, out: Path, options: ExportOptions = ExportOptions(), overwrite: bool = False) -> dict:
    """Export a known model to the bundle directory `out`; returns the manifest."""
    check_model_options(model, options)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; choose another directory or overwrite it")
    adapter = options.adapter or ScorerAdapter()
    names = list(options.score_names) if options.score_names else None
    samples = options.median_samples or 256
    try:
        if model == "onnx":
            from export.onnx_user import user_bundle

            return user_bundle(options.mapping, options.synthesis, options.scorer, names, adapter, out,
                               overwrite=overwrite, median_samples=samples)
        if model == "stylegan2":
            from export.checkpoint_specs import checkpoint_spec

            spec = checkpoint_spec(options.generator, options.scorer, names, adapter,
                                   1.0 if options.truncation is None else options.truncation, samples)
        elif model == "ohlora":
            from export.ohlora import ohlora_spec

            spec = ohlora_spec(options.generator, options.scorer)
        elif model == "synthetic-attributes":
            from export.attributes import attributes_spec
            from export.synthetic import DEFAULT_RESOLUTION

            spec = attributes_spec(options.resolution or DEFAULT_RESOLUTION)
        else:
            from export.scorer import WEIGHTS
            from export.synthetic import DEFAULT_RESOLUTION, synthetic_spec

            spec = synthetic_spec(options.resolution or DEFAULT_RESOLUTION, options.weights or WEIGHTS, name=model)
        return export_bundle(spec, out, overwrite=overwrite)
    except (CheckpointError, ValueError) as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from exc
