"""Export a generator + scorer pair to an ONNX model bundle, or a tested run's editor.

    python -m jobs.export --model synthetic|synthetic-hard|synthetic-attributes --out DIR [--resolution 64]
                          [--weights W.pt]
    python -m jobs.export --model ohlora --generator G.pth --scorer C.pth --out DIR
    python -m jobs.export --model stylegan2 --generator G.pt|G.pkl|G.pth --scorer C.onnx|C.pth
                          [--score-names a,b,c] [--scorer-size 224 --scorer-range 0,1 --scorer-mean .. --scorer-std ..]
                          [--truncation 0.7] --out DIR
    python -m jobs.export --model onnx --mapping M.onnx --synthesis S.onnx --scorer C.onnx --score-names a,b,c --out DIR
    python -m jobs.export --editor RUN --out DIR [--bundle B]

`synthetic` is the built-in model; `synthetic-hard` the same faces and scorer in a world
whose entanglement and cross-talk are calibrated so that the seeds' method lands near the
seeds' own figures (run jobs on it with --bundle DIR); `synthetic-attributes` the built-in
world with a scorer that uses other score names and adds the identity traits; `ohlora` is
the reference's genforce StyleGAN (256 px, 3-dim label) with its Property Score CNN.
`stylegan2` reads any StyleGAN checkpoint: rosinality stylegan2-pytorch .pt, NVIDIA
StyleGAN2(-ADA) .pkl (read without running anything in it) or genforce StyleGAN .pth, its
format and architecture read from the file. `onnx` takes your own three graphs.
`--editor RUN` writes instead a deployable editor of a tested run: one ONNX graph that
edits a face along its directions.
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobs.cli import UsageError, location_arg, parser, run_location, run_main

MODEL_FLAGS = ("model", "resolution", "weights", "generator", "scorer", "score_names", "scorer_size",
               "scorer_range", "scorer_mean", "scorer_std", "truncation", "median_samples", "mapping", "synthesis")


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="synthetic, synthetic-hard (the harder world), synthetic-attributes, ohlora, stylegan2 (a "
                        "checkpoint file) or onnx (your graphs); default synthetic")
    p.add_argument("--out", type=location_arg, required=True,
                   help="bundle (or --editor: editor) directory to create, or s3://bucket/prefix")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--resolution", type=int, default=None,
                   help="synthetic models: image size (multiple of 64; default 64)")
    p.add_argument("--weights", type=Path, default=None,
                   help="synthetic, synthetic-hard: scorer weights (default: the shipped ones)")
    p.add_argument("--generator", type=Path, default=None,
                   help="ohlora, stylegan2: the generator checkpoint (.pt rosinality, .pkl NVIDIA, .pth genforce)")
    p.add_argument("--scorer", type=Path, default=None,
                   help="ohlora: Property Score CNN checkpoint; stylegan2, onnx: an ONNX scorer (or a CNN .pth)")
    p.add_argument("--score-names", default=None, metavar="A,B,C",
                   help="stylegan2, onnx: the scorer's output columns, in order")
    p.add_argument("--scorer-size", default=None, metavar="PX",
                   help="resize the generator's images to PX x PX for the scorer (antialiased bilinear)")
    p.add_argument("--scorer-range", default=None, metavar="LOW,HIGH",
                   help="map the generator's [-1, 1] to this range for the scorer, e.g. 0,1 (default -1,1)")
    p.add_argument("--scorer-mean", default=None, metavar="R,G,B", help="then subtract this per channel ...")
    p.add_argument("--scorer-std", default=None, metavar="R,G,B", help="... and divide by this")
    p.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="stylegan2: w = w_avg + PSI (w - w_avg) in the mapping graph (default 1: none)")
    p.add_argument("--median-samples", type=int, default=None,
                   help="stylegan2, onnx: seeded samples the default group medians are measured on (default 256)")
    p.add_argument("--mapping", type=Path, default=None, help="onnx: mapping graph z -> w")
    p.add_argument("--synthesis", type=Path, default=None, help="onnx: synthesis graph w (or ws) -> image")
    p.add_argument("--editor", type=location_arg, default=None, metavar="RUN",
                   help="write the editor of this tested run instead of a model bundle")
    p.add_argument("--bundle", type=location_arg, default=None,
                   help="--editor: the run's model bundle (default: the one the run recorded, else the built-in "
                        "bundle whose hash the run recorded)")
    args = p.parse_args(argv)
    if args.editor is not None:
        return export_editor(args)
    if args.bundle is not None:
        raise UsageError("--bundle goes with --editor RUN (a model bundle is exported from --model)")
    model = args.model or "synthetic"
    options = export_options(args)
    started = time.perf_counter()
    print(f"exporting {model} to {args.out} (torch -> ONNX, then a parity check in ONNX Runtime)", flush=True)
    from export.models import export_model  # torch only now: --help and input errors stay fast
    from export.onnx_bundle import ExportError

    try:
        with out_directory(args.out, args.overwrite) as out:
            manifest = export_model(model, out, options, args.overwrite)
    except ExportError as exc:
        raise UsageError(str(exc)) from exc
    print(f"wrote bundle {args.out} ({manifest['model']}, {manifest['resolution']} px"
          + (f", {manifest['num_ws']} style layers" if manifest.get("num_ws") else "")
          + f", scores {', '.join(manifest['score_names'])}) in {time.perf_counter() - started:.0f}s")
    print(parity_line(manifest["parity"]))


@contextmanager
def out_directory(location, overwrite: bool) -> Iterator[Path]:
    """--out as the local directory the export writes: itself, or for an object store a
    temporary one whose files go up when the export has finished (compute.transfer: the
    manifest last). A store prefix in use without --overwrite is refused before any work."""
    from compute.storage import is_remote, place
    from compute.transfer import check_out_prefix, upload_directory

    if not is_remote(location):
        yield Path(location)
        return
    where = place(location)
    check_out_prefix(where, overwrite)
    with tempfile.TemporaryDirectory(prefix="vectorfind-export-") as tmp:
        yield Path(tmp) / "out"
        upload_directory(Path(tmp) / "out", where, overwrite)


def export_options(args):
    from export.models import ExportOptions
    from export.scorer_adapter import ScorerAdapter
    from vectors.names import check_score_names

    adapter = None
    if any(v is not None for v in (args.scorer_size, args.scorer_range, args.scorer_mean, args.scorer_std)):
        try:
            adapter = ScorerAdapter.from_flags(args.scorer_size, args.scorer_range, args.scorer_mean, args.scorer_std)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    names = None
    if args.score_names is not None:  # columns and file names later: checked here, before any file is read
        names = tuple(check_score_names([n.strip() for n in args.score_names.split(",")], "--score-names",
                                        "name each scorer output once, separated by commas"))
    return ExportOptions(resolution=args.resolution, weights=args.weights, generator=args.generator,
                         scorer=args.scorer, score_names=names, adapter=adapter, truncation=args.truncation,
                         median_samples=args.median_samples, mapping=args.mapping, synthesis=args.synthesis)


def parity_line(parity: dict) -> str:
    if parity.get("tolerance") is None:  # the user's own graphs: no torch side
        return f"checked: {parity.get('checked')}"
    figure = {stage: "n/a" if parity.get(stage) is None else f"{parity[stage]:.2e}" for stage in ("w", "image", "scores")}
    relative = max((v for v in parity.get("relative", {}).values() if v is not None), default=0.0)
    return (f"parity torch vs ONNX Runtime on {parity['codes']} codes: max abs diff w {figure['w']}, image "
            f"{figure['image']}, scores {figure['scores']}; worst relative {relative:.2e} (tolerance "
            f"{parity['tolerance']:g})")


def export_editor(args) -> None:
    given = [f"--{k.replace('_', '-')}" for k in MODEL_FLAGS if getattr(args, k, None) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} belong(s) to a model bundle export; --editor RUN exports a run's editor "
                         f"(its model bundle goes in --bundle)")
    from compute.editor import export_editor as write_editor

    started = time.perf_counter()
    from jobs.cli.bundles import run_bundle

    # The run's recorded bundle (or --bundle, which must have its hash); runs without a record:
    # None, and the editor looks for the run's hash among the built-in bundles.
    run = run_location(args.editor)
    bundle = run_bundle(run, args.bundle, default=False)
    with out_directory(args.out, args.overwrite) as out:
        manifest = write_editor(run, out, bundle, args.overwrite)
    parity = manifest["parity"]
    print(f"wrote editor {args.out} (editor.onnx, editor_fp16.onnx, manifest.json) of run {args.editor} in "
          f"{time.perf_counter() - started:.0f}s: space {manifest['space']}, properties "
          f"{', '.join(p['name'] for p in manifest['properties'])}, model {manifest['source_bundle']['model']}")
    print(f"groups ({', '.join(manifest['group_by']) or 'no grouping'}): {' '.join(manifest['groups'])}")
    print(f"parity vs the test stage on {len(parity['case_ids'])} cases x {len(parity['weights'])} weights: "
          f"max abs diff image {parity['image_max_abs_diff']:.2e}, scores {parity['scores_max_abs_diff']:.2e} "
          f"(tolerance {parity['tolerance']:g}); groups found = stored for {parity['groups_equal']} of "
          f"{len(parity['case_ids'])}; fp16 vs fp32 (GPU rounding emulated) image "
          f"{parity['fp16_image_max_abs_diff']:.2e}, scores {parity['fp16_scores_max_abs_diff']:.2e}")


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
