"""Glyphs: characters rendered from the fonts matplotlib ships, one class per character (no download).

`load_glyphs()` renders Latin, Greek, Cyrillic and symbol characters with
FreeType (matplotlib's `ft2font`) in 16 faces: DejaVu Sans, Serif and Sans
Mono (regular, bold, italic / oblique, bold italic) and STIX General (the
same four). A class is a character; what varies within it is the face, the
size (55-80 % of the image side), a rotation of up to +-15 degrees, the
position, the ink and paper colours (dark on light or light on dark, random
hues), a soft background gradient and Gaussian pixel noise. Matching a
character across a serif, a monospace and an italic face is a fine-grained
retrieval problem with strokes and shapes as its statistics, nothing like
`shapes` (filled outlines, textures, palettes) or photographs.

The candidate characters are those at least 8 of the 16 faces have (each
image of a character uses one of the faces that have it); characters that
look alike in DejaVu Sans (Latin "A" and Cyrillic "А", "l" and "|" ...) are
kept once, so no two classes share a drawing. The classes are drawn in a seeded
order and split BY CLASS (`tfdnc.datasets.generated.split_by_class`).
Which characters qualify depends on the fonts of the installed matplotlib,
so the same seed gives the same arrays with the same matplotlib.

Examples:
    >>> splits = load_glyphs(num_classes=20, images_per_class=3, seed=1)
    >>> splits.train.images.shape
    (30, 32, 32, 3)
"""

from __future__ import annotations

import functools
import os

import numpy as np

from tfdnc.datasets.base import DataSplits
from tfdnc.datasets.generated import check_image_options, check_integer, finish_pixels, split_by_class

FACES: tuple[str, ...] = tuple(
    [f"DejaVu{family}{style}.ttf" for family in ("Sans", "Serif", "SansMono")
     for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                   "-BoldOblique" if family != "Serif" else "-BoldItalic")]
    + ["STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf"]
)
# Unicode blocks the candidates come from: Basic Latin, Latin-1 and Latin
# Extended-A / B letters, Greek, Cyrillic, arrows and mathematical operators.
_BLOCKS = ((0x21, 0x7E), (0xA1, 0x24F), (0x391, 0x3C9), (0x400, 0x45F), (0x2190, 0x21FF), (0x2200, 0x22FF))
_MIN_FACES = 8  # of the 16: STIX lacks the arrows, DejaVu Sans Mono some operators
_SIMILAR = 0.95  # cosine of two candidates' DejaVu Sans drawings above which the later one is dropped
_MIN_INK = 12.0  # ink (sum of coverage, in pixels) a candidate needs at the reference size: no dots or marks


def _font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def _faces():
    from matplotlib.ft2font import FT2Font

    return [FT2Font(os.path.join(_font_dir(), name)) for name in FACES]


def _render(face, char: str, size: float, angle: float) -> np.ndarray:
    """The glyph's coverage (h, w) in [0, 1], tightly cropped."""
    from matplotlib.ft2font import LoadFlags

    face.clear()
    face.set_size(size, 72)  # 72 dpi: the size is in pixels
    face.set_text(char, angle, flags=LoadFlags.NO_HINTING)
    face.draw_glyphs_to_bitmap(antialiased=True)
    ink = np.asarray(face.get_image(), dtype=np.float32) / 255.0
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if not len(rows):
        return np.zeros((1, 1), np.float32)
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _paste(ink: np.ndarray, side: int, dy: float, dx: float) -> np.ndarray:
    """`ink` centred on a side x side canvas, shifted by (dy, dx) pixels; what falls outside is cut."""
    canvas = np.zeros((side, side), np.float32)
    h, w = ink.shape
    top, left = int(round((side - h) / 2 + dy)), int(round((side - w) / 2 + dx))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, side), min(left + w, side)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = ink[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas


@functools.lru_cache(maxsize=None)
def glyph_classes() -> tuple[str, ...]:
    """The characters at least `_MIN_FACES` faces have, look-alikes removed (in code point order)."""
    charmaps = [set(face.get_charmap()) for face in _faces()]
    reference = _faces()[0]
    kept, vectors = [], np.zeros((sum(h - lo + 1 for lo, h in _BLOCKS), 16 * 16), np.float32)
    for low, high in _BLOCKS:
        for code in range(low, high + 1):
            char = chr(code)
            if (sum(code in m for m in charmaps) < _MIN_FACES or code not in charmaps[0]
                    or not char.isprintable() or char.isspace()):
                continue
            ink = _render(reference, char, 22.0, 0.0)
            if ink.sum() < _MIN_INK:
                continue
            v = _paste(ink, 32, 0, 0).reshape(16, 2, 16, 2).mean((1, 3)).ravel()  # 16 x 16 is enough to compare
            v = (v / (np.linalg.norm(v) + 1e-12)).astype(np.float32)
            if kept and float(np.max(vectors[:len(kept)] @ v)) > _SIMILAR:
                continue
            vectors[len(kept)] = v
            kept.append(char)
    return tuple(kept)


def load_glyphs(
    num_classes: int = 400,
    images_per_class: int = 12,
    image_size: int = 32,
    train_fraction: float = 0.5,
    noise: float = 0.03,
    seed: int = 0,
) -> DataSplits:
    """Renders the glyphs benchmark (see the module docstring).

    Args:
        num_classes: characters in all, train and test together (at most
            `len(glyph_classes())`).
        images_per_class: images per character (>= 2).
        image_size: side of the square RGB images in pixels (>= 16).
        train_fraction: the share of the classes that train.
        noise: standard deviation of the Gaussian pixel noise (intensity in [0, 1]).
        seed: the class order and every image's face, size, angle, place
            and colours; the same seed gives the same arrays.

    Returns:
        `DataSplits` with in-memory `train` ("glyphs/train") and `test`
        ("glyphs/test") sets, protocol "default".
    """
    source = "glyphs"
    available = glyph_classes()
    check_integer(source, "num_classes", num_classes, 4, len(available))
    check_image_options(source, images_per_class, image_size, train_fraction, noise, seed)
    from matplotlib.colors import hsv_to_rgb

    rng = np.random.default_rng(seed)
    chars = [available[i] for i in rng.permutation(len(available))[:num_classes]]
    n = num_classes * images_per_class
    labels = np.repeat(np.arange(num_classes), images_per_class).astype(np.int64)
    charmaps = [set(face.get_charmap()) for face in _faces()]
    # each image: one of the faces that have its character
    has = np.array([[ord(c) in m for m in charmaps] for c in chars])[labels]
    pick = np.floor(rng.random(n) * has.sum(1)).astype(int)  # the pick-th face that has it
    face_ids = np.argmax(np.cumsum(has, 1) > pick[:, None], axis=1)
    sizes = image_size * rng.uniform(0.55, 0.8, n)
    angles = rng.uniform(-15.0, 15.0, n)
    shifts = rng.uniform(-0.1, 0.1, (n, 2)) * image_size
    # paper and ink: one of them dark, the other light, hues independent
    dark_ink = rng.random(n) < 0.5
    light, dark = rng.uniform(0.7, 1.0, n), rng.uniform(0.0, 0.35, n)
    paper = hsv_to_rgb(np.stack([rng.random(n), rng.uniform(0, 0.6, n), np.where(dark_ink, light, dark)], -1))
    ink_colour = hsv_to_rgb(np.stack([rng.random(n), rng.uniform(0, 0.9, n), np.where(dark_ink, dark, light)], -1))
    gradient = rng.uniform(-0.08, 0.08, (n, 2))
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    faces = _faces()
    pixels = np.empty((n, image_size, image_size, 3), np.float32)
    for i in range(n):
        ink = _render(faces[face_ids[i]], chars[labels[i]], float(sizes[i]), float(angles[i]))
        alpha = _paste(ink, image_size, *shifts[i])[..., None]
        shade = 1.0 + gradient[i, 0] * axis[:, None, None] + gradient[i, 1] * axis[None, :, None]
        pixels[i] = np.clip(paper[i] * shade, 0, 1) * (1 - alpha) + ink_colour[i] * alpha
    return split_by_class(source, finish_pixels(pixels, rng, noise), labels, num_classes, train_fraction)
