"""matplotlib without a display, imported only where a figure is drawn; the one rule that
turns a float image into 8-bit pixels; and names made safe for the two places the reports
put them: matplotlib text and Markdown."""
from __future__ import annotations

import html
import re


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_rgb(image):
    """A (3, H, W) image in [-1, 1] as (H, W, 3) uint8 pixels, by the project's one 8-bit
    rule for every image it writes (PNG files, the gallery's strips, the figures' faces):

        np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8)

    in float32: -1 -> 0, 1 -> 255, halves rounded to even (np.rint), NaN as 0. Applied to
    the editor graph's float image it gives jobs.render's pixels exactly."""
    import numpy as np

    image = np.nan_to_num(np.asarray(image, np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def fig_text(text) -> str:
    """A name as literal matplotlib text: every `$` escaped, so `$x$` (or an unbalanced `$`)
    is never parsed as mathtext, which renders a different string or raises after all the
    work. With no unescaped `$` matplotlib never enters math mode, whatever else is there."""
    return str(text).replace("$", r"\$")


_MD_SPECIAL = re.compile(r"([\\`*\[\]|$~!#{}])")
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text) -> str:
    """A name as literal Markdown text, also inside a table cell: HTML's `&<>"` as entities
    (no tag or script survives), Markdown's punctuation (`|` of table cells, backticks, `*`,
    `[`/`]` of links, `$` of math, backslash, ...) backslash-escaped, and `_` escaped where it
    could start or end emphasis (not inside a word, so `hair_color` reads as it is). Line
    breaks become spaces: a name stays on its line."""
    text = " ".join(str(text).splitlines()) if text is not None else ""
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    return html.escape(text, quote=True)


def md_code_fence(body: str) -> str:
    """A fence of backticks longer than any run of them in `body`, so the body cannot end the block."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)
