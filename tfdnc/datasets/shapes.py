"""Shapes: a generated, multimodal benchmark for Divide & Conquer (no download).

`load_shapes()` draws a few hundred classes of small RGB images in NumPy,
fully determined by `seed`. The classes come in FAMILIES, and what makes two
images similar differs from family to family: an attribute that defines the
class in one family is random nuisance in another. One embedding has to
serve them all, which is what Divide & Conquer's learners split between
them. The families also look different at a glance (each has its own
background style), so clustering the images' features at K = 2..4 can find
the sub-populations.

=========  ================================  ================================  ========================
family     defines the class                 nuisance (random per image)       background (the glance)
=========  ================================  ================================  ========================
shape      the outline: circle, regular      pale fill colour, faint fill      dark, near-neutral,
           polygon, flower or star with      texture, position, size,          vertical gradient
           3-6 corners / lobes; its hole     rotation (0-360 degrees)
           (none, small, large) and
           elongation (1, 1.5, 2.2)
texture    the fill pattern: stripes,        outline, colours, position,       mid grey with soft
           waves, checker, dots or grid      size, rotation of the outline,    blotches
           lines; its orientation (22.5      pattern phase
           degree steps) and period (4)
colour     the palette: background hue       outline, fill texture, position,  the class's saturated
           (16 steps), background value      size, rotation                    colour
           (dark, light), foreground hue
layout     2-4 blobs, all discs or all       blob colour and size, a shift     light grey with a
           squares, in class-specific cells  and scale of the whole layout     dark frame
           of a 3 x 3 grid (count, position
           and blob shape combined)
=========  ================================  ================================  ========================

Within a class the defining attributes also jitter a little (hues by about
3.6 degrees, texture orientation by 3 degrees and period by 4 %, hole size,
elongation, blob positions). Every image also gets a random global
brightness and contrast and Gaussian pixel noise (`noise`). `jitter` scales
the geometric and within-class attribute jitter: 1 is the default
difficulty; 0 keeps each image at its class prototype, apart from the
random nuisance attributes and rotation.

Class `c` belongs to family `c % num_families`; classes are split BY CLASS:
ids below `round(num_classes * train_fraction)` train, the others test, so
both splits hold every family and no class is in both. Each image's family
rides along in `ImageSet.extra["super_labels"]` (as SOP's super classes do);
`FAMILIES[i]` names family `i`. Images are uint8 (N, image_size,
image_size, 3), evaluated under the "default" protocol (R@1, 2, 4, 8
all-vs-all on the test classes). The default size (400 classes x 12
images at 32 x 32) takes under a second to generate on one core.

Examples:
    >>> splits = load_shapes(num_classes=40, images_per_class=4, seed=1)
    >>> splits.train.images.shape
    (80, 32, 32, 3)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.datasets.generated import check_integer

FAMILIES: tuple[str, ...] = ("shape", "texture", "colour", "layout")

# Outline kinds (shape family): circle, regular polygon, flower (smooth lobes), star.
_CIRCLE, _POLYGON, _FLOWER, _STAR = 0, 1, 2, 3
_CORNERS = (3, 4, 5, 6)
_HOLES = (0.0, 0.35, 0.6)
_ELONGATIONS = (1.0, 1.5, 2.2)

# Texture kinds (texture family). Orientations in 22.5 degree steps over the
# pattern's symmetry (180 degrees for stripes / waves, 90 for the others).
_TEXTURES = ("stripes", "waves", "checker", "dots", "grid")
_TEXTURE_SYMMETRY = (math.pi, math.pi, math.pi / 2, math.pi / 2, math.pi / 2)
_ORIENTATION_STEP = math.pi / 8
_PERIODS = (0.26, 0.36, 0.5, 0.7)  # in units where the image side is 2

# Colour family: hues on a 16-step wheel, two background values.
_HUE_STEPS = 16
_BACKGROUND_VALUES = (0.5, 0.85)

# Layout family: blob centres on a 3 x 3 grid, 2-4 blobs, disc or square.
_CELL_CENTRES = np.array([-0.5, 0.0, 0.5])
_BLOB_COUNTS = (2, 3, 4)
_MAX_BLOBS = max(_BLOB_COUNTS)

_CHUNK = 512  # images rendered at once (bounds the memory of the float maps)

Params = dict[str, np.ndarray]  # per-image parameters, each (N, ...)


def _shape_grid() -> list[tuple[int, int, float, float]]:
    outlines = [(_CIRCLE, 0)] + [(k, n) for k in (_POLYGON, _FLOWER, _STAR) for n in _CORNERS]
    return [(k, n, h, e) for (k, n) in outlines for h in _HOLES for e in _ELONGATIONS]


def _texture_grid() -> list[tuple[int, float, float]]:
    grid = []
    for kind, symmetry in enumerate(_TEXTURE_SYMMETRY):
        for step in range(int(round(symmetry / _ORIENTATION_STEP))):
            for period in _PERIODS:
                grid.append((kind, step * _ORIENTATION_STEP, period))
    return grid


def _colour_grid() -> list[tuple[float, float, float]]:
    return [
        (b / _HUE_STEPS, value, f / _HUE_STEPS)
        for b in range(_HUE_STEPS) for value in _BACKGROUND_VALUES for f in range(_HUE_STEPS) if f != b
    ]


def _layout_capacity() -> int:
    cells = len(_CELL_CENTRES) ** 2
    return 2 * sum(math.comb(cells, k) for k in _BLOB_COUNTS)


def family_capacity() -> dict[str, int]:
    """family name -> how many distinct classes it can hold."""
    return {
        "shape": len(_shape_grid()),
        "texture": len(_texture_grid()),
        "colour": len(_colour_grid()),
        "layout": _layout_capacity(),
    }


def load_shapes(
    num_classes: int = 400,
    images_per_class: int = 12,
    num_families: int = 4,
    image_size: int = 32,
    train_fraction: float = 0.5,
    noise: float = 0.05,
    jitter: float = 1.0,
    seed: int = 0,
) -> DataSplits:
    """Generates the shapes benchmark (see the module docstring).

    Args:
        num_classes: classes in all, train and test together (default 400).
        images_per_class: images drawn per class (>= 2).
        num_families: 1-4, the first families of `FAMILIES` used
            (shape, texture, colour, layout).
        image_size: side of the square RGB images in pixels (>= 16; the
            patterns are designed for 32 and up).
        train_fraction: the share of classes (the lowest ids) that train.
        noise: standard deviation of the Gaussian pixel noise, in [0, 1]
            intensity units.
        jitter: scale of the within-class variation (position, size,
            attribute jitter); 1 is the default difficulty.
        seed: seeds `numpy.random.default_rng`; the same seed gives the same
            arrays, and the class prototypes do not depend on
            `images_per_class`, `image_size`, `noise` or `jitter`.

    Returns:
        `DataSplits` with in-memory `train` ("shapes/train") and `test`
        ("shapes/test") sets, protocol "default".
    """
    _validate(num_classes, images_per_class, num_families, image_size, train_fraction, noise, jitter, seed)
    images, labels, families = _draw(num_classes, images_per_class, num_families, image_size, noise, jitter, seed)
    n_train = int(round(num_classes * train_fraction))
    is_train = labels < n_train

    def subset(mask: np.ndarray, split: str) -> ImageSet:
        return ImageSet(labels=labels[mask], images=images[mask], name=f"shapes/{split}",
                        extra={"super_labels": families[mask]})

    return DataSplits(train=subset(is_train, "train"), test=subset(~is_train, "test"), protocol="default")


def _draw(num_classes: int, images_per_class: int, num_families: int, image_size: int, noise: float,
          jitter: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, S, S, 3), labels, family of each image): class c in family c % num_families."""
    class_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    class_rng = np.random.default_rng(class_seq)
    family_seqs = image_seq.spawn(num_families)

    classes = np.arange(num_classes)
    family_of_class = classes % num_families
    images = np.empty((num_classes * images_per_class, image_size, image_size, 3), dtype=np.uint8)
    labels = np.repeat(classes, images_per_class).astype(np.int64)
    families = np.repeat(family_of_class, images_per_class).astype(np.int64)
    for f in range(num_families):
        members = classes[family_of_class == f]
        prototypes = _PROTOTYPES[FAMILIES[f]](class_rng, len(members))
        rows = (members[:, None] * images_per_class + np.arange(images_per_class)).reshape(-1)
        rng = np.random.default_rng(family_seqs[f])
        params = _IMAGE_PARAMS[FAMILIES[f]](rng, np.repeat(prototypes, images_per_class, axis=0), jitter)
        for start in range(0, len(rows), _CHUNK):
            part = slice(start, start + _CHUNK)
            chunk = {k: v[part] for k, v in params.items()}
            pixels = _RENDER[FAMILIES[f]](chunk, image_size)
            images[rows[part]] = _finish(pixels, chunk, noise, rng)
    return images, labels, families


def _validate(
    num_classes: int, images_per_class: int, num_families: int, image_size: int,
    train_fraction: float, noise: float, jitter: float, seed: int,
) -> None:
    def real(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"shapes: `{name}` must be a finite number, got {value!r}")

    check_integer("shapes", "num_families", num_families, 1)
    if num_families > len(FAMILIES):
        raise ValueError(
            f"shapes: `num_families` must be at most {len(FAMILIES)} ({', '.join(FAMILIES)}), got {num_families}"
        )
    check_integer("shapes", "num_classes", num_classes, 2 * num_families)
    check_integer("shapes", "images_per_class", images_per_class, 2)
    check_integer("shapes", "image_size", image_size, 16)
    check_integer("shapes", "seed", seed, 0)
    real("train_fraction", train_fraction)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"shapes: `train_fraction` must be in (0, 1), got {train_fraction}")
    real("noise", noise)
    if noise < 0:
        raise ValueError(f"shapes: `noise` must be >= 0, got {noise}")
    real("jitter", jitter)
    if jitter < 0:
        raise ValueError(f"shapes: `jitter` must be >= 0, got {jitter}")
    n_train = int(round(num_classes * train_fraction))
    if n_train < num_families or num_classes - n_train < num_families:
        raise ValueError(
            f"shapes: `train_fraction` {train_fraction} of `num_classes` {num_classes} gives {n_train} train "
            f"and {num_classes - n_train} test classes; each split needs at least one class per family "
            f"({num_families})"
        )
    capacity = family_capacity()
    for f in range(num_families):
        wanted = len(range(f, num_classes, num_families))
        if wanted > capacity[FAMILIES[f]]:
            limit = min(capacity[name] for name in FAMILIES[:num_families])
            raise ValueError(
                f"shapes: `num_classes` {num_classes} puts {wanted} classes in the {FAMILIES[f]!r} family, "
                f"which holds at most {capacity[FAMILIES[f]]}; with {num_families} families use at most "
                f"{limit * num_families} classes"
            )


# --- class prototypes: (classes, attributes) float arrays ------------------------

def _pick(rng: np.random.Generator, grid: list, count: int) -> np.ndarray:
    return np.asarray(grid, dtype=np.float64)[rng.permutation(len(grid))[:count]]


def _shape_prototypes(rng: np.random.Generator, count: int) -> np.ndarray:
    return _pick(rng, _shape_grid(), count)  # kind, corners, hole, elongation


def _texture_prototypes(rng: np.random.Generator, count: int) -> np.ndarray:
    return _pick(rng, _texture_grid(), count)  # kind, orientation, period


def _colour_prototypes(rng: np.random.Generator, count: int) -> np.ndarray:
    return _pick(rng, _colour_grid(), count)  # background hue, background value, foreground hue


def _layout_prototypes(rng: np.random.Generator, count: int) -> np.ndarray:
    """blob kind (0 disc, 1 square), then _MAX_BLOBS cell indices (-1: no blob)."""
    chosen: set[tuple] = set()
    out = np.full((count, 1 + _MAX_BLOBS), -1.0)
    cells = len(_CELL_CENTRES) ** 2
    while len(chosen) < count:
        kind = int(rng.integers(2))
        blobs = int(rng.choice(_BLOB_COUNTS))
        key = (kind, tuple(sorted(rng.choice(cells, blobs, replace=False).tolist())))
        if key not in chosen:
            out[len(chosen), 0] = kind
            out[len(chosen), 1:1 + blobs] = key[1]
            chosen.add(key)
    return out


_PROTOTYPES = {
    "shape": _shape_prototypes, "texture": _texture_prototypes,
    "colour": _colour_prototypes, "layout": _layout_prototypes,
}


# --- per-image parameters: dict of (N, ...) arrays ---------------------------------

def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns (N, 3)."""
    h = np.mod(h, 1.0) * 6.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ], 1)
    return table[np.arange(len(h)), i]


def _random_colour(rng: np.random.Generator, n: int, s=(0.45, 0.95), v=(0.6, 1.0)) -> np.ndarray:
    return _hsv_to_rgb(rng.random(n), rng.uniform(*s, n), rng.uniform(*v, n))


def _placement(rng: np.random.Generator, n: int, jitter: float, scale: float) -> Params:
    return {
        "cx": rng.uniform(-0.12, 0.12, n) * jitter,
        "cy": rng.uniform(-0.12, 0.12, n) * jitter,
        "scale": scale * np.exp(rng.uniform(-0.15, 0.15, n) * jitter),
        "rotation": rng.uniform(0, 2 * math.pi, n),
    }


def _random_outline(rng: np.random.Generator, n: int, holes=_HOLES, elongations=_ELONGATIONS) -> Params:
    outline = rng.integers(0, 1 + 3 * len(_CORNERS), n)
    return {
        "kind": np.where(outline == 0, _CIRCLE, 1 + (outline - 1) // len(_CORNERS)),
        "corners": np.where(outline == 0, 4, np.asarray(_CORNERS)[(outline - 1) % len(_CORNERS)]),
        "hole": np.asarray(holes)[rng.integers(0, len(holes), n)],
        "elongation": np.asarray(elongations)[rng.integers(0, len(elongations), n)],
    }


def _random_texture(rng: np.random.Generator, n: int) -> Params:
    return {
        "texture": rng.integers(0, len(_TEXTURES), n),
        "orientation": rng.uniform(0, math.pi, n),
        "period": rng.uniform(min(_PERIODS), max(_PERIODS), n),
    }


def _texture_phases(rng: np.random.Generator, n: int) -> Params:
    return {"phase1": rng.random(n), "phase2": rng.random(n)}


def _globals(rng: np.random.Generator, n: int) -> Params:
    return {"brightness": rng.normal(0, 0.04, n), "contrast": np.exp(rng.normal(0, 0.1, n))}


def _shape_params(rng: np.random.Generator, proto: np.ndarray, jitter: float) -> Params:
    n = len(proto)
    colour_a = _random_colour(rng, n, s=(0.15, 0.5), v=(0.7, 1.0))  # pale: the outline stands out
    p = {
        **_placement(rng, n, jitter, 0.6),
        "kind": proto[:, 0].astype(int),
        "corners": proto[:, 1].astype(int),
        "hole": np.clip(proto[:, 2] + (proto[:, 2] > 0) * rng.normal(0, 0.03, n) * jitter, 0, 0.75),
        "elongation": proto[:, 3] * np.exp(rng.normal(0, 0.05, n) * jitter),
        **_random_texture(rng, n), **_texture_phases(rng, n),
        "colour_a": colour_a,
        "colour_b": colour_a * rng.uniform(0.75, 0.9, (n, 1)),
        "bg_level": rng.uniform(0.06, 0.2, n),
        "bg_tint": 1 + rng.normal(0, 0.1, (n, 3)),
        "bg_gradient": rng.uniform(-0.06, 0.06, n),
    }
    return {**p, **_globals(rng, n)}


def _texture_params(rng: np.random.Generator, proto: np.ndarray, jitter: float) -> Params:
    n = len(proto)
    hue, sat, val = rng.random(n), rng.uniform(0.2, 0.6, n), rng.uniform(0.75, 1.0, n)
    p = {
        **_placement(rng, n, jitter, 0.75),
        **_random_outline(rng, n, holes=(0.0,), elongations=(1.0, 1.4)),
        "texture": proto[:, 0].astype(int),
        "orientation": proto[:, 1] + rng.normal(0, math.radians(3), n) * jitter,
        "period": proto[:, 2] * np.exp(rng.normal(0, 0.04, n) * jitter),
        **_texture_phases(rng, n),
        "colour_a": _hsv_to_rgb(hue, sat, val),
        "colour_b": _hsv_to_rgb(hue + rng.uniform(-0.1, 0.1, n), sat, val * rng.uniform(0.2, 0.4, n)),
        "bg_level": rng.uniform(0.42, 0.58, n),
        "bg_waves": rng.normal(0, 1, (n, 2, 2)) * 0.5,  # two soft blotch waves: direction (cycles / unit)
        "bg_wave_phase": rng.random((n, 2)),
    }
    return {**p, **_globals(rng, n)}


def _colour_params(rng: np.random.Generator, proto: np.ndarray, jitter: float) -> Params:
    n = len(proto)
    hue_jitter = 0.01 * jitter
    colour_a = _hsv_to_rgb(proto[:, 2] + rng.normal(0, hue_jitter, n), rng.uniform(0.7, 1.0, n),
                           rng.uniform(0.7, 1.0, n))
    p = {
        **_placement(rng, n, jitter, 0.5),
        **_random_outline(rng, n),
        **_random_texture(rng, n), **_texture_phases(rng, n),
        "colour_a": colour_a,
        "colour_b": colour_a * rng.uniform(0.55, 0.8, (n, 1)),
        "bg_colour": _hsv_to_rgb(proto[:, 0] + rng.normal(0, hue_jitter, n), rng.uniform(0.6, 0.85, n),
                                 np.clip(proto[:, 1] * np.exp(rng.normal(0, 0.05, n) * jitter), 0, 1)),
        "bg_gradient": rng.uniform(-0.05, 0.05, n),
    }
    return {**p, **_globals(rng, n)}


def _layout_params(rng: np.random.Generator, proto: np.ndarray, jitter: float) -> Params:
    n = len(proto)
    cells = proto[:, 1:].astype(int)
    valid = cells >= 0
    side = len(_CELL_CENTRES)
    centres = np.stack([_CELL_CENTRES[np.maximum(cells, 0) % side], _CELL_CENTRES[np.maximum(cells, 0) // side]], -1)
    scale = np.exp(rng.uniform(-0.08, 0.08, (n, 1, 1)) * jitter)
    shift = rng.uniform(-0.15, 0.15, (n, 1, 2)) * jitter
    centres = centres * scale + shift + rng.normal(0, 0.02, (n, _MAX_BLOBS, 2)) * jitter
    p = {
        "blob_kind": proto[:, 0].astype(int),
        "blob_centres": centres,
        "blob_valid": valid,
        "blob_radius": rng.uniform(0.16, 0.2, (n, 1)) * np.exp(rng.normal(0, 0.05, (n, _MAX_BLOBS)) * jitter),
        "colour_a": _random_colour(rng, n, s=(0.5, 1.0), v=(0.3, 0.8)),
        "bg_level": rng.uniform(0.78, 0.92, n),
    }
    return {**p, **_globals(rng, n)}


_IMAGE_PARAMS = {
    "shape": _shape_params, "texture": _texture_params,
    "colour": _colour_params, "layout": _layout_params,
}


# --- rendering: float (n, S, S, 3) in about [0, 1] ---------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel-centre coordinates u (right) and v (down) in [-1, 1], and the pixel size."""
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    return t[None, None, :], t[None, :, None], 2.0 / size


def _col(x: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1, 1) float32, to broadcast against (n, S, S) maps."""
    return np.asarray(x, dtype=np.float32)[:, None, None]


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased inside test of a signed distance `d` (positive inside)."""
    return np.clip(0.5 + d / px, 0.0, 1.0)


def _outline_area_scale(kind: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Per image, the factor that gives its outline the area of a radius-1 circle."""
    theta = np.linspace(0, 2 * math.pi, 720, endpoint=False, dtype=np.float32)[None, :]
    r = _outline_radius(theta, kind[:, None], corners[:, None])
    area = 0.5 * np.mean(r ** 2, axis=1) * 2 * math.pi
    return np.sqrt(math.pi / area).astype(np.float32)


def _outline_radius(theta: np.ndarray, kind: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Radius of the outline at angle `theta` (unit outer radius)."""
    n = np.maximum(np.asarray(corners, dtype=np.float32), 3)  # circles carry 0 corners
    sector = 2 * math.pi / n
    local = np.mod(theta, sector) - sector / 2
    polygon = np.cos(math.pi / n) / np.cos(local)
    flower = (1 + 0.28 * np.cos(n * theta)) / 1.28
    star = 0.45 + 0.55 * (1 - np.abs(local) / (sector / 2))
    r = np.where(kind == _POLYGON, polygon, np.where(kind == _FLOWER, flower, star))
    return np.where(kind == _CIRCLE, np.float32(1.0), r)


def _outline_mask(p: Params, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """(n, S, S) coverage of each image's outline."""
    x, y = u - _col(p["cx"]), v - _col(p["cy"])
    c, s = _col(np.cos(p["rotation"])), _col(np.sin(p["rotation"]))
    scale = _col(p["scale"] * _outline_area_scale(p["kind"], p["corners"]))
    root = _col(np.sqrt(p["elongation"]))
    xr = (c * x + s * y) / (scale * root)
    yr = (-s * x + c * y) * root / scale
    rho = np.hypot(xr, yr)
    r = _outline_radius(np.arctan2(yr, xr), _col(p["kind"]), _col(p["corners"]))
    mask = _soft((r - rho) * scale, px)
    hole = _col(np.where(p["hole"] > 0, p["hole"], -1.0))  # -1: nothing cut out
    return mask * _soft((rho - hole * r) * scale, px)


def _texture_map(p: Params, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """(n, S, S) pattern in [0, 1] in image coordinates (it does not turn with the outline)."""
    n = len(p["texture"])
    out = np.empty((n, u.shape[-1], u.shape[-1]), dtype=np.float32)
    for kind in range(len(_TEXTURES)):
        idx = np.flatnonzero(p["texture"] == kind)
        if not len(idx):
            continue
        c, s = _col(np.cos(p["orientation"][idx])), _col(np.sin(p["orientation"][idx]))
        period = _col(p["period"][idx])
        ph1, ph2 = _col(p["phase1"][idx]), _col(p["phase2"][idx])
        a = (u * c + v * s) / period + ph1  # across the stripes, in periods
        b = (-u * s + v * c) / period + ph2
        name = _TEXTURES[kind]
        if name == "stripes":
            t = np.clip(0.5 + 2.0 * np.sin(2 * math.pi * a), 0, 1)
        elif name == "waves":
            t = np.clip(0.5 + 2.0 * np.sin(2 * math.pi * (a + 0.3 * np.sin(math.pi * b))), 0, 1)
        elif name == "checker":
            t = np.clip(0.5 + 3.0 * np.sin(2 * math.pi * a) * np.sin(2 * math.pi * b), 0, 1)
        elif name == "dots":
            d = np.hypot(np.mod(a, 1.0) - 0.5, np.mod(b, 1.0) - 0.5) * period
            t = _soft(0.3 * period - d, px)
        else:  # grid lines
            da = np.abs(np.mod(a, 1.0) - 0.5) * period
            db = np.abs(np.mod(b, 1.0) - 0.5) * period
            t = _soft(np.maximum(da, db) - 0.32 * period, px)
        out[idx] = t
    return out


def _fill(p: Params, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """(n, S, S, 3): colour_a where the pattern is 1, colour_b where it is 0."""
    t = _texture_map(p, u, v, px)[..., None]
    a = np.asarray(p["colour_a"], np.float32)[:, None, None, :]
    b = np.asarray(p["colour_b"], np.float32)[:, None, None, :]
    return b + (a - b) * t


def _composite(background: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return background * (1 - m) + fill * m


def _render_shape(p: Params, size: int) -> np.ndarray:
    u, v, px = _grid(size)
    level = _col(p["bg_level"]) + _col(p["bg_gradient"]) * v
    background = np.broadcast_to(level, (len(level), size, size))[..., None] * \
        np.asarray(p["bg_tint"], np.float32)[:, None, None, :]
    return _composite(background, _fill(p, u, v, px), _outline_mask(p, u, v, px))


def _render_texture(p: Params, size: int) -> np.ndarray:
    u, v, px = _grid(size)
    waves = np.asarray(p["bg_waves"], np.float32)
    phase = np.asarray(p["bg_wave_phase"], np.float32)
    level = _col(p["bg_level"]) + np.zeros((1, size, size), np.float32)
    for w in range(2):
        arg = u * _col(waves[:, w, 0]) + v * _col(waves[:, w, 1]) + _col(phase[:, w])
        level = level + 0.06 * np.sin(2 * math.pi * arg)
    background = np.repeat(level[..., None], 3, axis=-1)
    return _composite(background, _fill(p, u, v, px), _outline_mask(p, u, v, px))


def _render_colour(p: Params, size: int) -> np.ndarray:
    u, v, px = _grid(size)
    shade = 1 + _col(p["bg_gradient"]) * (u + v)
    background = shade[..., None] * np.asarray(p["bg_colour"], np.float32)[:, None, None, :]
    return _composite(background, _fill(p, u, v, px), _outline_mask(p, u, v, px))


def _render_layout(p: Params, size: int) -> np.ndarray:
    u, v, px = _grid(size)
    n = len(p["blob_kind"])
    mask = np.zeros((n, size, size), np.float32)
    square = _col(p["blob_kind"] == 1)
    for k in range(_MAX_BLOBS):
        x = u - _col(p["blob_centres"][:, k, 0])
        y = v - _col(p["blob_centres"][:, k, 1])
        r = _col(p["blob_radius"][:, k])
        disc = r - np.hypot(x, y)
        box = 0.88 * r - np.maximum(np.abs(x), np.abs(y))  # about the disc's area
        blob = _soft(np.where(square > 0, box, disc), px) * _col(p["blob_valid"][:, k])
        mask = np.maximum(mask, blob)
    edge = np.maximum(np.abs(u), np.abs(v))
    frame = _soft(0.04 - np.abs(edge - 0.93), px)
    level = _col(p["bg_level"]) * (1 - 0.65 * frame)
    background = np.repeat(level[..., None], 3, axis=-1)
    fill = np.broadcast_to(np.asarray(p["colour_a"], np.float32)[:, None, None, :], background.shape)
    return _composite(background, fill, mask)


_RENDER = {
    "shape": _render_shape, "texture": _render_texture,
    "colour": _render_colour, "layout": _render_layout,
}


def _finish(pixels: np.ndarray, p: Params, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Global brightness / contrast, pixel noise, and the uint8 conversion."""
    contrast = np.asarray(p["contrast"], np.float32)[:, None, None, None]
    brightness = np.asarray(p["brightness"], np.float32)[:, None, None, None]
    out = (pixels - 0.5) * contrast + 0.5 + brightness
    if noise > 0:
        out = out + rng.normal(0, noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
