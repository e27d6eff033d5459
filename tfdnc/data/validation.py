"""Checks of every split before a long run, with the decoder training uses.

A run of hundreds of epochs must not die at the step that first samples the
one bad file among 100,000, nor in the evaluation after hours of training.
`validate_splits` therefore decodes every image of every split (train, test,
query, gallery and any extra query/gallery pairs) with
`tfdnc.data.transforms.decode_image`, the function the training and
evaluation pipelines, the decoded-image cache and the serving graph call,
and drops what it cannot read, naming the file, its class and the reason.

Decoding runs inside a `tf.data` map with parallel calls (no Python per
file, several files at once); only files that fail are looked at again, one
by one, to say why. Results are kept in a cache file keyed by path, size,
modification and change time, so a second run (a resumed one, or one on
the same data) decodes only files that changed.

The report (skipped.txt) has one line per record:

    SPLIT: skipped PATH (class CLASS): REASON
    SPLIT: class CLASS has fewer than 2 images (no positive pair); its images are skipped
    SPLIT: class CLASS lost every image to the skips above

PATH, CLASS and REASON are written as they are unless they hold a line
break or another control character (or start with a double quote); then
they are written as a JSON string: in double quotes, with \n, \t, \" and
\\ escapes (`json.loads` reads it back). So a file name with a newline
cannot split its record. The records of the loader (`DataSplits.left_out`:
a second path to one file through a symbolic link, a class folder linking
to the data folder itself) come first.

Examples:
    >>> splits = load_dataset("folder", "/data/products")  # doctest: +SKIP
    >>> splits, report = validate_splits(splits, cache_path="/runs/a/image_check.json")  # doctest: +SKIP
    >>> report.write("/runs/a/skipped.txt"); print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.utils import read_json, write_json
from tfdnc.utils.atomic import atomic_open
from tfdnc.utils.errors import UserInputError

# Largest image (height x width, read from its header) validation lets
# through: decoding 40 megapixels takes 120 MB (uint8 RGB) plus 480 MB for
# the float32 copy the crop resizes from, per parallel call. Larger files are
# skipped before decoding; pass `max_pixels=None` to allow any size. The same
# figure as the export's default `max_pixels`, so what trains can be served.
DEFAULT_MAX_PIXELS = 40_000_000

_CACHE_FORMAT = "tfdnc-image-check/1"
_SPLITS = ("train", "test", "query", "gallery")
_STRICT_LISTED = 20  # files a strict-mode error names one by one
# Reasons starting so are not cached: a permission fixed with chmod changes no size or mtime.
_READ_ERROR = "cannot read the file: "


class InvalidImageError(UserInputError):
    """An image file cannot be decoded (raised in strict mode); the message names the files."""


@dataclass(frozen=True)
class SkippedImage:
    """One image left out of a split, and why."""

    split: str  # "train", "test", "query", "gallery" or "<extra test>/query" ...
    path: str
    class_name: str  # the class folder / list name, or the label when there is none
    reason: str

    def line(self) -> str:
        """The record's one line of skipped.txt (names with line breaks escaped: see `one_line`)."""
        return (f"{self.split}: skipped {one_line(self.path)} (class {one_line(self.class_name)}): "
                f"{one_line(self.reason)}")


# Characters that end a line for str.splitlines() (and so for most readers),
# and other control characters a terminal would act on.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    r"""`text` as is, or as a JSON string when it holds a line break or control character.

    A name starting with a double quote is quoted too, so a field that
    starts with one is always JSON. The quoted form escapes every character
    `_UNSAFE` matches (JSON itself leaves U+2028, U+2029 and U+0085 raw,
    which `str.splitlines` would split on).

    Examples:
        >>> one_line("cat/1.jpg"), one_line("cat/a\nb.jpg")
        ('cat/1.jpg', '"cat/a\\nb.jpg"')
    """
    text = str(text)
    if _UNSAFE.search(text) or text.startswith('"'):
        quoted = json.dumps(text, ensure_ascii=False)
        return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)
    return text


@dataclass
class ValidationReport:
    """What validation removed from each split, and why.

    Attributes:
        left_out: what the loader did not list (`DataSplits.left_out`):
            duplicates through symbolic links, a class folder linking to
            the data folder; split "data" when the loader did not know it.
        skipped: every unreadable image, with its split, class and reason.
        lone_classes: training labels with fewer than 2 readable images (no
            positive pair); their images are dropped from the training split.
        emptied_classes: (split, class) pairs whose every image was skipped.
        class_names: label -> name for the labels named above.
        decoded, cached: files decoded by this call / answered from the cache.
        seconds: wall time of the check.
    """

    skipped: list[SkippedImage] = field(default_factory=list)
    lone_classes: list[int] = field(default_factory=list)
    left_out: list[SkippedImage] = field(default_factory=list)
    emptied_classes: list[tuple[str, str]] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)
    decoded: int = 0
    cached: int = 0
    seconds: float = 0.0

    @property
    def unreadable(self) -> list[tuple[str, str]]:
        """(path, reason) of every skipped image."""
        return [(s.path, s.reason) for s in self.skipped]

    @property
    def removed(self) -> int:
        """How many unreadable images were skipped (lone-class images not counted)."""
        return len(self.skipped)

    def class_label(self, label: int) -> str:
        return _describe_class(self.class_names.get(int(label)), label)

    def lines(self) -> list[str]:
        """One line per skipped image or class; empty when nothing was skipped."""
        out = [s.line() for s in self.left_out] + [s.line() for s in self.skipped]
        out += [f"train: class {self.class_label(c)} has fewer than 2 images (no positive pair); "
                "its images are skipped" for c in self.lone_classes]
        out += [f"{split}: class {name} lost every image to the skips above" for split, name in self.emptied_classes]
        return out

    def summary(self) -> str:
        """One line for the console."""
        by_split: dict[str, int] = {}
        for s in self.skipped:
            by_split[s.split] = by_split.get(s.split, 0) + 1
        where = ", ".join(f"{n} in {split}" for split, n in by_split.items()) or "none"
        listed = (f"; left out while listing (files reached twice through symbolic links, ...): "
                  f"{len(self.left_out)}") if self.left_out else ""
        return (f"image check: {self.decoded} decoded, {self.cached} from cache in {self.seconds:.1f} s; "
                f"skipped unreadable images: {where}; single-image training classes: {len(self.lone_classes)}"
                + listed)

    def write(self, path: str | os.PathLike) -> None:
        """Writes `lines()` (or a line saying nothing was skipped) to a text file."""
        lines = self.lines() or ["every image decoded; nothing skipped"]
        with atomic_open(path, encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def validate_splits(
    splits: DataSplits,
    *,
    strict: bool = False,
    cache_path: str | os.PathLike | None = None,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    channels: int = 3,
) -> tuple[DataSplits, ValidationReport]:
    """Decodes every image of every split; drops what training could not read.

    Every split present is checked (train, test, query, gallery and the
    query/gallery pairs of `extra_tests`) with the decoder the pipelines
    use. Unreadable files are skipped in every split; in the training split
    classes left with fewer than 2 images are dropped too. In-memory splits
    need no decoding and are only checked for lone classes.

    Args:
        splits: what a loader returned.
        strict: raise `InvalidImageError` naming every unreadable file
            instead of skipping them (lone classes are still dropped).
        cache_path: JSON file that remembers each file's outcome by path,
            size, modification and change time, for this decoder (channels,
            TensorFlow version); e.g. in the run directory or beside the
            data. None: no cache.
        workers: parallel decodes (None: tf.data AUTOTUNE).
        max_pixels: skip images whose header declares more pixels than
            this, before decoding them (None: no limit).
        channels: what files are decoded to; the pipelines decode files to
            3 (RGB).

    Returns:
        The splits without the skipped images (the same object when nothing
        was skipped) and the report.

    Raises:
        InvalidImageError: in strict mode, naming the unreadable files.
        ValueError: when a split has no readable image left.

    Examples:
        >>> splits, report = validate_splits(load_dataset("sop", "/data/sop"), cache_path="/data/sop/check.json")  # doctest: +SKIP
        >>> print("\\n".join(report.lines()))  # doctest: +SKIP
    """
    start = time.perf_counter()
    named = _named_sets(splits)
    checker = _ImageChecker(channels, max_pixels, cache_path, workers)
    reasons = checker.check(sorted({p for _, s in named if s.paths is not None for p in s.paths}))
    if strict:
        _refuse_unreadable(reasons)
    report = ValidationReport(decoded=checker.decoded, cached=checker.cached,
                              left_out=[SkippedImage(x.split, x.path, x.class_name, x.reason)
                                        for x in getattr(splits, "left_out", [])])
    cleaned = {}
    for split, image_set in named:
        cleaned[split] = _clean(split, image_set, reasons, report)
    report.seconds = time.perf_counter() - start
    if all(cleaned[split] is image_set for split, image_set in named):
        return splits, report
    return _rebuild(splits, cleaned), report


def validate_training_set(
    image_set: ImageSet, strict: bool = False, workers: int = 8
) -> tuple[ImageSet, ValidationReport]:
    """Drops unreadable image files and classes with a single image.

    The training split alone, checked as `validate_splits` checks every
    split (same decoder, no cache). `strict=True` raises `InvalidImageError`
    naming the bad files instead of skipping them.

    Returns:
        The cleaned image set and the report.
    """
    checker = _ImageChecker(3, DEFAULT_MAX_PIXELS, None, workers)
    start = time.perf_counter()
    reasons = checker.check(sorted(set(image_set.paths))) if image_set.paths is not None else {}
    if strict:
        _refuse_unreadable(reasons)
    report = ValidationReport(decoded=checker.decoded, cached=checker.cached)
    cleaned = _clean("train", image_set, reasons, report)
    report.seconds = time.perf_counter() - start
    return cleaned, report


def check_image_files(
    paths: list[str],
    *,
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    cache_path: str | os.PathLike | None = None,
    workers: int | None = None,
) -> dict[str, str | None]:
    """path -> why `decode_image` cannot use it (None: readable), for any list of files.

    The file check of `validate_splits` without the splits, for callers
    holding plain paths (an export gallery, a pretraining folder).

    Examples:
        >>> from tfdnc.utils.files import list_image_files
        >>> bad = {p: r for p, r in check_image_files(list_image_files("gallery")).items() if r}
        >>> bad
        {}
    """
    return _ImageChecker(channels, max_pixels, cache_path, workers).check(sorted(set(paths)))


# --------------------------------------------------------------------------- splits


def _refuse_unreadable(reasons: dict[str, str | None]) -> None:
    """Strict mode: raises `InvalidImageError` naming the unreadable files, if any."""
    bad = sorted(p for p, r in reasons.items() if r is not None)
    if bad:
        listed = "\n".join(f"  {one_line(p)}: {one_line(reasons[p])}" for p in bad[:_STRICT_LISTED])
        more = f"\n  ... and {len(bad) - _STRICT_LISTED} more" if len(bad) > _STRICT_LISTED else ""
        raise InvalidImageError(f"cannot decode {len(bad)} image file(s) (strict images):\n{listed}{more}")


def _named_sets(splits: DataSplits) -> list[tuple[str, ImageSet]]:
    named = [(name, getattr(splits, name)) for name in _SPLITS if getattr(splits, name) is not None]
    for test_name, (query, gallery) in splits.extra_tests.items():
        named += [(f"{test_name}/query", query), (f"{test_name}/gallery", gallery)]
    return named


def _rebuild(splits: DataSplits, cleaned: dict[str, ImageSet]) -> DataSplits:
    extra = {name: (cleaned[f"{name}/query"], cleaned[f"{name}/gallery"]) for name in splits.extra_tests}
    return dataclasses.replace(splits, **{n: cleaned[n] for n in _SPLITS if n in cleaned}, extra_tests=extra)


def _describe_class(name: str | None, label: int) -> str:
    """'cat' (label 4) when the class has a name of its own, else 4."""
    return str(label) if name is None or name == str(label) else f"{name!r} (label {label})"


def _class_names(image_set: ImageSet) -> np.ndarray:
    names = image_set.extra.get("class_names")
    if names is not None and len(names) == len(image_set):
        return np.asarray(names).astype(str)
    return image_set.labels.astype(str)


def _clean(split: str, image_set: ImageSet, reasons: dict[str, str | None], report: ValidationReport) -> ImageSet:
    """`image_set` without unreadable files (and, for training, lone classes)."""
    names = _class_names(image_set)
    keep = np.ones(len(image_set), bool)
    if image_set.paths is not None:
        for i, path in enumerate(image_set.paths):
            reason = reasons.get(path)
            if reason is not None:
                keep[i] = False
                report.skipped.append(SkippedImage(split, path, str(names[i]), reason))
    before = set(np.unique(image_set.labels).tolist())
    emptied = sorted(before - set(np.unique(image_set.labels[keep]).tolist()))
    for label in emptied:
        name = str(names[np.flatnonzero(image_set.labels == label)[0]])
        report.emptied_classes.append((split, _describe_class(name, label)))
    if split == "train":
        labels, counts = np.unique(image_set.labels[keep], return_counts=True)
        lone = labels[counts < 2]
        if len(lone):
            report.lone_classes += [int(c) for c in lone]
            for c in lone:
                report.class_names[int(c)] = str(names[np.flatnonzero(image_set.labels == c)[0]])
            keep &= ~np.isin(image_set.labels, lone)
    if not keep.any():
        raise ValueError(f"{image_set.name or split}: no usable images left after validation "
                         f"({len(image_set)} checked; see the skipped files above)"
                         + "".join(f"\n  {s.line()}" for s in report.skipped[-5:]))
    return image_set if keep.all() else image_set.subset(keep)


# --------------------------------------------------------------------------- files


class _ImageChecker:
    """Decodes files with the pipelines' decoder; answers path -> skip reason (None: readable)."""

    def __init__(self, channels: int, max_pixels: int | None, cache_path, workers: int | None):
        if channels not in (1, 3, 4):
            raise ValueError(f"image check: `channels` must be 1, 3 or 4 (what the pipelines decode), got {channels!r}")
        if max_pixels is not None and int(max_pixels) < 1:
            raise ValueError(f"image check: `max_pixels` must be >= 1 or None, got {max_pixels}")
        if workers is not None and int(workers) < 1:
            raise ValueError(f"image check: `workers` must be >= 1 or None, got {workers}")
        self.channels = int(channels)
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.cache_path = None if cache_path is None else os.fspath(cache_path)
        self.workers = workers
        self.decoded = 0
        self.cached = 0

    def check(self, paths: list[str]) -> dict[str, str | None]:
        if not paths:
            return {}
        from tfdnc.data.cache import is_cached

        if is_cached(ImageSet(labels=np.zeros(len(paths)), paths=paths)):
            return {p: None for p in paths}  # written by the cache from already-decoded pixels
        cache = self._load_cache()
        reasons: dict[str, str | None] = {}
        todo: list[tuple[str, list]] = []  # (path, [size, mtime_ns, ctime_ns]) to decode now
        for path in paths:
            try:
                stat = os.stat(path)
            except OSError as exc:
                reasons[path] = f"{_READ_ERROR}{exc.strerror or exc}"
                continue
            stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
            entry = cache.get(os.path.abspath(path))
            outcome = self._from_cache(entry, stamp)
            if outcome is _RECHECK:
                todo.append((path, stamp))
            else:
                reasons[path] = outcome
                self.cached += 1
        if todo:
            results = self._decode([p for p, _ in todo])
            for (path, stamp), (height, width, decoded, reason) in zip(todo, results):
                entry = stamp + [height, width, decoded, reason]
                reasons[path] = self._from_cache(entry, stamp)
                if reason is None or not reason.startswith(_READ_ERROR):
                    cache[os.path.abspath(path)] = entry
                else:
                    cache.pop(os.path.abspath(path), None)
            self.decoded += len(todo)
            self._save_cache(cache)
        return reasons

    # Cache entries: [size, mtime_ns, ctime_ns, height, width, decoded, reason];
    # `decoded` False with no reason means "too large to decode under the limit
    # of the time". The change time catches chmod and files replaced with their
    # old modification time kept.
    def _from_cache(self, entry, stamp):
        if entry is None or list(entry[:3]) != stamp:
            return _RECHECK
        height, width, decoded, reason = entry[3:]
        if reason is not None:
            return reason
        if self.max_pixels is not None and height * width > self.max_pixels:
            return (f"{width} x {height} = {height * width:,} pixels, more than max_pixels "
                    f"({self.max_pixels:,}); it is not decoded (raise max_pixels to train on it)")
        return None if decoded else _RECHECK

    def _load_cache(self) -> dict:
        if self.cache_path is None or not os.path.exists(self.cache_path):
            return {}
        try:
            content = read_json(self.cache_path, what="image check cache")
        except ValueError:
            return {}  # unreadable cache: check again and rewrite it
        if not isinstance(content, dict) or content.get("key") != self._cache_key():
            return {}
        return content.get("files", {})

    def _save_cache(self, cache: dict) -> None:
        if self.cache_path is None:
            return
        folder = os.path.dirname(os.path.abspath(self.cache_path))
        os.makedirs(folder, exist_ok=True)
        write_json(self.cache_path, {"key": self._cache_key(), "files": cache}, indent=None)

    def _cache_key(self) -> dict:
        import tensorflow as tf

        return {"format": _CACHE_FORMAT, "channels": self.channels, "tensorflow": tf.__version__}

    def _decode(self, paths: list[str]) -> list[tuple[int, int, bool, str | None]]:
        """(height, width, decoded, reason) per path; failures diagnosed one by one."""
        import tensorflow as tf

        from tfdnc.data.transforms import declared_image_size, decode_image

        channels = self.channels
        limit = -1 if self.max_pixels is None else self.max_pixels

        @tf.autograph.experimental.do_not_convert  # plain graph ops; tf.cond is explicit
        def check(index, path):
            contents = tf.io.read_file(path)
            height, width = declared_image_size(contents)
            small = tf.logical_or(limit < 0, height * width <= limit)
            # Too large: report the declared size without decoding (decoded = False).
            shape = tf.cond(
                small,
                lambda: tf.shape(decode_image(contents, channels), out_type=tf.int64)[:2],
                lambda: tf.stack([height, width]),
            )
            head = tf.strings.substr(tf.strings.join([contents, b"\0\0"]), 0, 2)
            return index, shape, small, head

        dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths), dtype=np.int64), paths))
        dataset = dataset.map(check, num_parallel_calls=self.workers or tf.data.AUTOTUNE, deterministic=False)
        dataset = dataset.ignore_errors().batch(4096)
        results: list = [None] * len(paths)
        for index, shape, small, head in dataset.as_numpy_iterator():
            for i, (h, w), ok, magic in zip(index, shape, small, head):
                reason = _palette_bmp_reason(paths[i]) if ok and magic == b"BM" else None
                results[i] = (int(h), int(w), bool(ok), reason)
        for i, result in enumerate(results):
            if result is None:
                results[i] = (0, 0, False, _diagnose(paths[i], channels))
        return results


_RECHECK = object()


# --------------------------------------------------------------------------- reasons


def _diagnose(path: str, channels: int) -> str:
    """Why `decode_image` cannot read `path`, in words (the file failed in the parallel pass)."""
    import tensorflow as tf

    from tfdnc.data.transforms import decode_image

    try:
        with open(path, "rb") as f:
            contents = f.read()
    except OSError as exc:
        return f"{_READ_ERROR}{exc.strerror or exc}"
    if not contents:
        return "empty file (0 bytes)"
    known = _format_reason(contents)
    if known:
        return known
    try:
        decode_image(tf.constant(contents), channels)
    except (tf.errors.OpError, ValueError) as exc:
        message = re.sub(r"\{\{function_node [^}]*\}\}", "", getattr(exc, "message", str(exc)))
        return f"TensorFlow cannot decode it: {message.split('[Op:')[0].strip()}"
    return "failed in the parallel check, decoded alone (transient read error?)"


_FORMATS = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
            (b"BM", "BMP"))
_OTHER_FORMATS = ((b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"%PDF", "PDF"), (b"\0\0\0\x0cjP  ", "JPEG 2000"),
                  (b"8BPS", "Photoshop"))


def _format_reason(contents: bytes) -> str | None:
    """A named reason for files TensorFlow is known not to decode; None otherwise."""
    readable = "TensorFlow decodes JPEG, PNG, GIF, BMP and WebP"
    is_webp = contents[:4] == b"RIFF" and contents[8:12] == b"WEBP"
    if is_webp:
        # VP8X header, flags byte: bit 1 = animation (TF 2.21 refuses it with 3 channels).
        if contents[12:16] == b"VP8X" and len(contents) > 20 and contents[20] & 0x02:
            return "animated WebP: TensorFlow cannot decode it to RGB; save it as a still image"
        return None
    if not any(contents.startswith(magic) for magic, _ in _FORMATS):
        for magic, name in _OTHER_FORMATS:
            if contents.startswith(magic):
                return f"{name} data, not an image TensorFlow reads ({readable}); convert it"
        if contents[:5].lower() in (b"<?xml", b"<svg ") or contents[:4].lower() == b"<svg":
            return f"SVG data, not an image TensorFlow reads ({readable}); convert it"
        return f"not an image: starts with {contents[:8]!r}, no JPEG/PNG/GIF/BMP/WebP header"
    if contents.startswith(b"BM") and len(contents) >= 32:
        bits = int.from_bytes(contents[28:30], "little")
        compression = int.from_bytes(contents[30:34], "little")
        if bits not in (8, 24, 32):
            return (f"{bits}-bit BMP: TensorFlow decodes only 8-, 24- and 32-bit BMP; "
                    "convert it (e.g. to PNG)")
        if compression not in (0, 3):  # BI_RGB, BI_BITFIELDS
            return f"compressed BMP (compression {compression}): TensorFlow decodes only uncompressed BMP; convert it"
    return None


def _palette_bmp_reason(path: str) -> str | None:
    """An 8-bit BMP with a colour palette decodes without error but wrong.

    TensorFlow's BMP decoder ignores the palette and returns the colour
    indices as grey levels; only a grey ramp palette (index i -> (i, i, i))
    gives the right pixels.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(54 + 1024)
    except OSError as exc:
        return f"{_READ_ERROR}{exc.strerror or exc}"
    if len(head) < 54 or int.from_bytes(head[28:30], "little") != 8:
        return None
    header_size = int.from_bytes(head[14:18], "little")
    used = int.from_bytes(head[46:50], "little") or 256
    palette = np.frombuffer(head[14 + header_size: 14 + header_size + 4 * used], np.uint8)
    if len(palette) % 4:
        return None
    palette = palette.reshape(-1, 4)[:, :3].astype(int)
    if np.array_equal(palette, np.repeat(np.arange(len(palette))[:, None], 3, axis=1)):
        return None
    return ("8-bit BMP with a colour palette: TensorFlow ignores the palette and would train on the "
            "colour indices as grey levels; convert it (e.g. to PNG)")
