"""Render picked faces (compute.picks) through an editor (compute.editor) with chosen
property weights: one PNG per face, or with a sweep one strip per face whose frames are
labelled with their weights, and a CSV of every frame's weights and measured scores.

A face keeps the group it was picked with (passed to the editor as an index). Pixels are
the editor's float image by the project's 8-bit rule (compute.plots.to_rgb).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compute.editor import Editor
from compute.picks import Picks, PicksError, csv_line
from compute.plots import to_rgb
from compute.storage import Place, as_place, place
from compute.tables import read_table, vector_matrix
from vectors.names import file_name

GAP = 2      # white pixels between the frames of a sweep


def check_picks(picks: Picks, editor: Editor) -> list[str]:
    """Refuses picks this editor cannot render faithfully (other dims, another model bundle,
    unknown groups); returns warning lines for faces it renders but cannot trace to its run."""
    m = editor.manifest
    dim, name = picks.codes.shape[1], picks.path.name
    if dim != m["code_dim"]:
        kind = "z codes (the reference's)" if not picks.ours else "codes"
        raise PicksError(f"{name} holds {dim}-dim {kind}; this editor edits {m['latent']} codes of {m['code_dim']} "
                         f"dims (space {m['space']})" + ("; export an editor from a --space z run for them"
                                                         if not picks.ours and m["latent"] != "z" else ""))
    if picks.latent is not None and picks.latent != m["latent"]:
        raise PicksError(f"{name} holds {picks.latent} codes, this editor edits {m['latent']} codes (space "
                         f"{m['space']}); use the editor of a run in {picks.latent} space")
    source = m["source_bundle"]["manifest_sha256"]
    if picks.bundle_sha256 is not None and not source.startswith(picks.bundle_sha256.lower()):
        raise PicksError(f"{name} was picked on the model bundle {picks.bundle_sha256[:16]}, this editor's is "
                         f"{source[:16]}; use the editor of the picks' run")
    unknown = sorted({g for g in picks.groups or [] if g not in editor.groups})
    if unknown:
        raise PicksError(f"{name} names groups {', '.join(unknown)}, the editor has {', '.join(editor.groups)}")
    if not picks.ours:
        return []
    cases_file = place(m["cases_file"])  # where the editor's export found the run: a path or a store URI
    if not cases_file.is_file():
        return [f"the editor's run {m['source_run']} is gone: case ids and codes of {name} are not checked"]
    cases = read_table(cases_file, columns=["case_id", m["latent"]])
    row = {c: i for i, c in enumerate(cases["case_id"].to_pylist())}
    # The picks carry their own codes, so a face from another run of the same bundle still
    # renders faithfully; it only cannot be traced back to this run's test results.
    warnings, missing = [], [c for c in picks.case_ids if c not in row]
    if missing:
        warnings.append(f"{name} names case(s) {', '.join(map(str, missing[:5]))} that the editor's run "
                        f"{m['source_run']} does not have: they are drawn from the codes in {name}")
    present = [c for c in picks.case_ids if c in row]
    stored = vector_matrix(cases[m["latent"]])[[row[c] for c in present]]
    codes = picks.codes[[i for i, c in enumerate(picks.case_ids) if c in row]]
    wrong = [c for c, a, b in zip(present, codes, stored) if not np.array_equal(a, b)]
    if wrong:
        warnings.append(f"the codes of case(s) {', '.join(map(str, wrong[:5]))} in {name} differ from the run's "
                        f"({m['source_run']}): they are drawn from the codes in {name}")
    return warnings


def parse_weights(text: str | None, editor: Editor) -> tuple[dict[str, float], list[str]]:
    """{property: weight} from "eyes=0.8,mouth=-0.5" (unset ones 0), and a warning line per
    weight outside the property's tested range."""
    weights = {p: 0.0 for p in editor.property_names}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, _, value = (t.strip() for t in item.partition("="))
        if name not in weights:
            raise PicksError(f"the editor has no property {name!r} (it edits {', '.join(editor.property_names)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise PicksError(f"--set {item!r}: expected NAME=NUMBER") from None
        if not np.isfinite(weights[name]):
            raise PicksError(f"--set {item!r}: the weight must be a finite number")
    return weights, [out_of_range(p, weights[p["name"]]) for p in editor.manifest["properties"]
                     if not p["min"] <= weights[p["name"]] <= p["max"]]


def out_of_range(prop: dict, value: float) -> str:
    return (f"{prop['name']}={value:g} is outside its tested range [{prop['min']:g}, {prop['max']:g}]: "
            f"the run never checked edits that far")


def _frame_weights(editor: Editor, weights: dict[str, float], sweep: str | None, steps: int) -> np.ndarray:
    """(F, P): the one weight vector, or `steps` of them over the swept property's tested range."""
    names = editor.property_names
    if sweep is not None and sweep not in names:
        raise PicksError(f"--sweep {sweep}: the editor has no property {sweep!r} (it edits {', '.join(names)})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise PicksError(f"--steps must be a whole number >= 2, got {steps!r}")
    frames = np.array([[weights[p] for p in names]], np.float32)
    if sweep is not None:
        prop = next(p for p in editor.manifest["properties"] if p["name"] == sweep)
        frames = np.repeat(frames, steps, axis=0)
        frames[:, names.index(sweep)] = np.linspace(prop["min"], prop["max"], steps)
    return frames


def render_picks(editor: Editor, picks: Picks, weights: dict[str, float], out: Place | Path, sweep: str | None = None,
                 steps: int = 7, threads: int = 2) -> list[Place]:
    """One PNG per face (case_{id}.png), or with `sweep` one strip per face over that
    property's tested range (case_{id}_{sweep}.png, each frame labelled with its weights)
    and sweep_{sweep}.csv (every frame's weights and the scores the bundle's scorer gives
    its image); everything is drawn before any file is written."""
    frames = _frame_weights(editor, weights, sweep, steps)                          # (F, P)
    groups = np.array([editor.groups.index(g) for g in picks.groups] if picks.groups else [-1] * len(picks.codes))
    codes = np.repeat(picks.codes, len(frames), axis=0)
    rows = (np.tile(frames, (len(picks.codes), 1)), np.repeat(groups, len(frames)))
    images, scores, used = editor.run(editor.session(threads=threads), codes, *rows)  # in memory-bounded calls
    images = images.reshape(len(picks.codes), len(frames), *images.shape[1:])
    suffix = f"_{sweep}" if sweep else ""
    names = [file_name(f"case_{c}{suffix}.png", "picture file name") for c in picks.case_ids]
    if sweep is None:
        return _write(as_place(out), {n: to_rgb(face[0]) for n, face in zip(names, images)}, {})
    labels = [frame_label(editor.property_names, f, sweep) for f in frames]
    pictures = {n: labelled_strip([to_rgb(f) for f in face], labels) for n, face in zip(names, images)}
    table = sweep_table(editor, names, picks.case_ids, frames, scores, used)
    return _write(as_place(out), pictures, {file_name(f"sweep_{sweep}.csv", "sweep table file name"): table})


def frame_label(properties: list[str], weights: np.ndarray, sweep: str) -> list[str]:
    """A frame's label lines: the swept weight, then every other weight that is not 0."""
    shown = [sweep] + [p for p, w in zip(properties, weights) if w != 0 and p != sweep]
    return [f"{' '.join(str(p).split())}={float(weights[properties.index(p)]):.3g}" for p in shown]  # one line each


def _font(lines: list[list[str]], width: int):
    """Pillow's own font at the largest size (up to 1/16 of a large frame) at which the
    widest line fits a frame."""
    from PIL import ImageFont

    probe = ImageFont.load_default(size=100)
    widest = max(probe.getlength(t) for frame in lines for t in frame) or 1
    size = min(width * 0.94 * 100 / widest, max(11, width // 16))
    return ImageFont.load_default(size=max(7, int(size)))


def labelled_strip(frames: list[np.ndarray], labels: list[list[str]]) -> np.ndarray:
    """uint8 frames side by side, GAP white pixels apart, over a white band that holds each
    frame's label lines (cut at the frame's edge if they do not fit)."""
    from PIL import Image, ImageDraw

    height, width = frames[0].shape[:2]
    font = _font(labels, width)
    line = int(getattr(font, "size", 11) * 1.25) + 1  # a bitmap font (Pillow without FreeType) has no size
    band = np.full((len(max(labels, key=len)) * line + 4, width, 3), 255, np.uint8)
    columns = []
    for frame, text in zip(frames, labels):
        cell = Image.fromarray(band)
        draw = ImageDraw.Draw(cell)
        for k, t in enumerate(text):
            draw.text((1, 2 + k * line), t, fill=(40, 40, 40), font=font)
        columns += [np.concatenate([frame, np.asarray(cell)]), np.full((height + len(band), GAP, 3), 255, np.uint8)]
    return np.concatenate(columns[:-1], axis=1)


def sweep_table(editor: Editor, files: list[str], case_ids, frames: np.ndarray, scores: np.ndarray,
                used: np.ndarray) -> str:
    """CSV text: one row per frame of every face with its weights, the group the edit used
    and the scores of its image (exact float32 values)."""
    header = (["file", "case_id", "frame", "group"] + [f"weight_{p}" for p in editor.property_names]
              + [f"score_{s}" for s in editor.manifest["score_names"]])
    lines, row = [csv_line(header)], 0
    for name, case_id in zip(files, case_ids):
        for k, weights in enumerate(frames):
            values = [str(np.float32(v)) for v in (*weights, *scores[row])]
            lines.append(csv_line([name, str(case_id), str(k), editor.groups[used[row]], *values]))
            row += 1
    return "\n".join(lines) + "\n"


def _write(out: Place, pictures: dict[str, np.ndarray], tables: dict[str, str]) -> list[Place]:
    """Each file whole (compute.storage): in a local directory or under an object store prefix."""
    from PIL import Image

    out.mkdir()
    written = []
    for name, pixels in pictures.items():
        with (out / name).open_write() as f:
            Image.fromarray(pixels).save(f, format="png")
        written.append(out / name)
    for name, text in tables.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written
