"""Export a known generator + scorer pair to a bundle by name: the torch side of `jobs.export`
and of the built-in model's first-use export."""
from __future__ import annotations

from pathlib import Path

from export.checkpoints import CheckpointError
from export.onnx_bundle import ExportError, export_bundle

MODELS = ("synthetic", "synthetic-attributes", "ohlora")


class ModelError(ExportError):
    """Options that do not fit the chosen model, or a model that could not be exported."""


def check_model_options(model: str, resolution=None, weights=None, generator=None, scorer=None) -> None:
    if model not in MODELS:
        raise ModelError(f"unknown model {model!r}; choose from: {', '.join(MODELS)}")
    if model.startswith("synthetic") and (generator or scorer):
        raise ModelError(f"a generator and a scorer checkpoint are for the ohlora model; the {model} "
                         f"model takes scorer weights and a resolution")
    if model == "synthetic-attributes" and weights:
        raise ModelError("the synthetic-attributes model uses the shipped scorer weights")
    if resolution is not None and (resolution < 64 or resolution % 64):
        raise ModelError(f"resolution must be a positive multiple of 64, got {resolution}")
    if model == "ohlora":
        if resolution or weights:
            raise ModelError("resolution and scorer weights are for the synthetic models; the ohlora "
                             "model is 256 px and takes a generator and a scorer checkpoint")
        if not generator or not scorer:
            raise ModelError("the ohlora model needs both checkpoints: a generator and a scorer")


def export_model(model: str, out: Path, resolution: int | None = None, weights: Path | None = None,
                 overwrite: bool = False, generator: Path | None = None, scorer: Path | None = None) -> dict:
    """Export a known model to the bundle directory `out`; returns the manifest."""
    check_model_options(model, resolution, weights, generator, scorer)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ModelError(f"{out} exists and is not empty; choose another directory or overwrite it")
    try:
        if model == "ohlora":
            from export.ohlora import ohlora_spec

            spec = ohlora_spec(generator, scorer)
        elif model == "synthetic-attributes":
            from export.attributes import attributes_spec
            from export.synthetic import DEFAULT_RESOLUTION

            spec = attributes_spec(resolution or DEFAULT_RESOLUTION)
        else:
            from export.scorer import WEIGHTS
            from export.synthetic import DEFAULT_RESOLUTION, synthetic_spec

            spec = synthetic_spec(resolution or DEFAULT_RESOLUTION, weights or WEIGHTS)
        return export_bundle(spec, out, overwrite=overwrite)
    except (CheckpointError, ValueError) as exc:
        raise ModelError(str(exc)) from exc
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from exc
