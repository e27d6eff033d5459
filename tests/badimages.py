"""A bad-input corpus, written at test time: odd, broken and hostile image files.

`write_bad_files(folder)` writes the files TensorFlow's decoders refuse (or
would decode wrongly), each with the words validation must give as its skip
reason; `write_odd_files(folder)` writes files Pillow and TensorFlow both
read although they are unusual (CMYK, palette, alpha, 16-bit, animated GIF).
`write_folder_dataset(root)` lays both out as a folder data set (train/ and
test/ class folders) next to enough good images to train on, with unicode
and space class names, a one-image class and a symlink loop.

Nothing binary is committed: every file is generated here in milliseconds,
the 8000 x 8000 PNG included (a constant colour, compressed row by row).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

# File name -> words its skip reason must contain.
BAD_FILES = {
    "one_bit.bmp": "1-bit BMP",
    "palette_8bit.bmp": "colour palette",
    "truncated.jpg": "TensorFlow cannot decode it",
    "truncated.png": "TensorFlow cannot decode it",
    "zero_bytes.jpg": "empty file",
    "text_named.jpg": "not an image",
    "tiff_named.jpg": "TIFF data",
    "animated.webp": "animated WebP",
    "huge_8000x8000.png": "more than max_pixels",
    "loop_a.jpg": "Too many levels of symbolic links",
    "loop_b.jpg": "Too many levels of symbolic links",
    "dangling_link.jpg": "No such file or directory",
}

# Readable although unusual: validation keeps them and training reads them.
ODD_FILES = (
    "cmyk.jpg", "grey.jpg", "palette.png", "palette_alpha.png", "rgba.png", "grey_alpha.png",
    "grey_16bit.png", "rgb_16bit.png", "one_bit.png", "animated.gif", "grey_8bit.bmp", "rgba_32bit.bmp",
    "still.webp",
)

HUGE_SIDE = 8000


def picture(seed: int, height: int = 24, width: int = 28) -> np.ndarray:
    """A random uint8 RGB picture (what the odd files are made from)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def constant_png(height: int, width: int, value: int = 200) -> bytes:
    """An RGB PNG of one colour, compressed row by row (an 8000 x 8000 one is 190 kB)."""
    compressor = zlib.compressobj(9)
    row = b"\0" + bytes([value]) * (3 * width)  # filter type 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
            + _png_chunk(b"IEND", b""))


def rgb16_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of uint16 (H, W, 3) `pixels` (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bad_file_contents(seed: int = 0) -> dict[str, bytes]:
    """name -> bytes of every `BAD_FILES` entry that is a file (not a link)."""
    rgb = Image.fromarray(picture(seed))
    jpeg, png = _encoded(rgb, "JPEG", quality=90), _encoded(rgb, "PNG")
    frames = [Image.fromarray(picture(seed + k)) for k in range(2)]
    return {
        "one_bit.bmp": _encoded(rgb.convert("1"), "BMP"),
        "palette_8bit.bmp": _encoded(rgb.convert("P"), "BMP"),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "zero_bytes.jpg": b"",
        "text_named.jpg": b"this is a text file, not a JPEG\n",
        "tiff_named.jpg": _encoded(rgb, "TIFF"),
        "animated.webp": _encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "huge_8000x8000.png": constant_png(HUGE_SIDE, HUGE_SIDE),
    }


def write_bad_files(folders, seed: int = 0) -> dict[str, str]:
    """Writes every `BAD_FILES` entry, spread over `folders` (one folder or several).

    Returns:
        path written -> the words its skip reason must contain.
    """
    folders = [os.fspath(folders)] if isinstance(folders, (str, os.PathLike)) else [os.fspath(f) for f in folders]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    written = {}
    for i, (name, data) in enumerate(sorted(bad_file_contents(seed).items())):
        path = os.path.join(folders[i % len(folders)], name)
        with open(path, "wb") as f:
            f.write(data)
        written[path] = BAD_FILES[name]
    # Two links pointing at each other (in two folders when there are two), and one at nothing.
    loop_a = os.path.join(folders[0], "loop_a.jpg")
    loop_b = os.path.join(folders[1 % len(folders)], "loop_b.jpg")
    os.symlink(os.path.relpath(loop_b, folders[0]), loop_a)
    os.symlink(os.path.relpath(loop_a, os.path.dirname(loop_b)), loop_b)
    dangling = os.path.join(folders[2 % len(folders)], "dangling_link.jpg")
    os.symlink("no_such_file.jpg", dangling)
    for path in (loop_a, loop_b, dangling):
        written[path] = BAD_FILES[os.path.basename(path)]
    return written


def write_odd_files(folder: str | os.PathLike, seed: int = 0) -> dict[str, np.ndarray]:
    """Writes every `ODD_FILES` entry into `folder`; returns name -> the RGB pixels it holds."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    pixels = picture(seed)
    rgb = Image.fromarray(pixels)
    palette = rgb.convert("P")
    wide = (pixels.astype(np.uint16) * 257)  # 16-bit values whose top byte is `pixels`
    images = {
        "cmyk.jpg": (rgb.convert("CMYK"), "JPEG", {"quality": 95}),
        "grey.jpg": (rgb.convert("L"), "JPEG", {"quality": 95}),
        "palette.png": (palette, "PNG", {}),
        "palette_alpha.png": (palette, "PNG", {"transparency": 0}),
        "rgba.png": (rgb.convert("RGBA"), "PNG", {}),
        "grey_alpha.png": (rgb.convert("LA"), "PNG", {}),
        "grey_16bit.png": (Image.fromarray(wide[..., 0]), "PNG", {}),
        "one_bit.png": (rgb.convert("1"), "PNG", {}),
        "animated.gif": (palette, "GIF", {"save_all": True, "append_images": [rgb.rotate(90).convert("P")]}),
        "grey_8bit.bmp": (rgb.convert("L"), "BMP", {}),
        "rgba_32bit.bmp": (rgb.convert("RGBA"), "BMP", {}),
        "still.webp": (rgb, "WEBP", {"lossless": True}),
    }
    expected = {}
    for name, (image, fmt, options) in images.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(_encoded(image, fmt, **options))
        expected[name] = np.asarray(image.convert("RGB"))
    expected["grey_16bit.png"] = np.repeat(pixels[..., :1], 3, axis=2)
    with open(os.path.join(folder, "rgb_16bit.png"), "wb") as f:
        f.write(rgb16_png(wide))
    expected["rgb_16bit.png"] = pixels
    return expected


def write_good_class(folder: str | os.PathLike, count: int, seed: int) -> None:
    """`count` plain JPEGs of one class: a class colour plus noise."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    for i in range(count):
        noise = rng.integers(-30, 30, (24, 28, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"good_{i}.jpg"), quality=90)


def write_folder_dataset(root: str | os.PathLike) -> dict[str, dict[str, str]]:
    """A `train/` + `test/` folder data set holding the whole corpus.

    Layout: good classes (some with unicode and space names) in both
    splits; the bad files spread over the class folders of both splits; the
    odd-but-readable files in a class of their own in each split; a class
    whose only images are bad; a one-image class in `train/`; a directory
    symlink pointing back at its own class folder.

    Returns:
        split -> {path of a bad file: expected reason words}.
    """
    root = os.fspath(root)
    bad = {}
    for s, split in enumerate(("train", "test")):
        names = ["alpha", "beta", "café crème", "猫 cat", "with  two spaces"] if split == "train" else \
            ["gamma", "delta", "naïve ü", "space cat"]
        for c, name in enumerate(names):
            write_good_class(os.path.join(root, split, name), 5, seed=100 * s + c)
        # The bad files spread over the class folders, so every class keeps good images.
        bad.update(write_bad_files([os.path.join(root, split, n) for n in names], seed=s))
        write_odd_files(os.path.join(root, split, "odd formats"), seed=s)
        all_bad = os.path.join(root, split, "only bad")
        os.makedirs(all_bad)
        with open(os.path.join(all_bad, "empty.jpg"), "wb"):
            pass
        bad[os.path.join(all_bad, "empty.jpg")] = "empty file"
        write_good_class(os.path.join(root, split, "with  two spaces" if split == "train" else "gamma", "nested"),
                         1, seed=7 + s)
    write_good_class(os.path.join(root, "train", "solo"), 1, seed=99)
    os.symlink("..", os.path.join(root, "train", "alpha", "back_up"))  # a directory loop the lister must not follow
    return {split: {p: r for p, r in bad.items() if p.startswith(os.path.join(root, split) + os.sep)}
            for split in ("train", "test")}
