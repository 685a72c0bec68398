"""Export a generator + scorer pair to an ONNX model bundle.

    python -m jobs.export --model synthetic --out DIR [--resolution 64] [--overwrite]
"""
from __future__ import annotations

import sys
from pathlib import Path

from jobs.cli import UsageError, parser, run_main

MODELS = ("synthetic",)


def export_model(model: str, out: Path, resolution: int | None = None,
                 weights: Path | None = None, overwrite: bool = False) -> dict:
    """Export a known model to `out`; returns the manifest. Raises UsageError on bad input."""
    # torch is imported here, not at module level, so `--help` and input errors stay fast.
    from export.checkpoints import CheckpointError
    from export.onnx_bundle import ExportError
    from export.scorer import WEIGHTS
    from export.synthetic import DEFAULT_RESOLUTION, synthetic_spec

    if model not in MODELS:
        raise UsageError(f"unknown --model {model!r}; choose from: {', '.join(MODELS)}")
    from export.onnx_bundle import export_bundle

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    try:
        spec = synthetic_spec(resolution or DEFAULT_RESOLUTION, weights or WEIGHTS)
        return export_bundle(spec, out, overwrite=overwrite)
    except (CheckpointError, ExportError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from exc


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="synthetic", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--resolution", type=int, default=None,
                   help="image size for the synthetic model (multiple of 64; default 64)")
    p.add_argument("--weights", type=Path, default=None,
                   help="scorer weights for the synthetic model (default: the shipped ones)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    manifest = export_model(args.model, args.out, args.resolution, args.weights, args.overwrite)
    parity = manifest["parity"]
    print(f"wrote bundle {args.out} ({manifest['model']}, {manifest['resolution']} px, "
          f"scores {', '.join(manifest['score_names'])})")
    print(f"parity torch vs ONNX Runtime on {parity['codes']} codes: max abs diff "
          f"w {parity['w']:.2e}, image {parity['image']:.2e}, scores {parity['scores']:.2e}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
