"""Image validation: every split, the training decoder, named skips, a cache; the bad-input corpus end to end."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from badimages import BAD_FILES, HUGE_SIDE, constant_png, write_bad_files, write_folder_dataset, write_good_class, \
    write_odd_files

from tfdnc.data.pipeline import make_eval_dataset, make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.data.transforms import decode_image
from tfdnc.data.validation import InvalidImageError, check_image_files, validate_splits, validate_training_set
from tfdnc.datasets import DatasetError, load_dataset
from tfdnc.datasets.base import DataSplits, ImageSet
from tfdnc.utils import list_image_files

SPLITS = ("train", "test", "query", "gallery", "extra/query", "extra/gallery")


def _good_paths(folder, classes=3, per_class=3):
    paths, labels = [], []
    for c in range(classes):
        write_good_class(folder / f"class{c}", per_class, seed=c)
        names = sorted(os.listdir(folder / f"class{c}"))
        paths += [str(folder / f"class{c}" / n) for n in names]
        labels += [c] * len(names)
    return paths, labels


def _every_split(paths, labels, names=None):
    def image_set(split):
        extra = {"class_names": np.array(names)} if names is not None else {}
        return ImageSet(labels=np.array(labels), paths=list(paths), name=f"corpus/{split}", extra=extra)

    return DataSplits(train=image_set("train"), test=image_set("test"), query=image_set("query"),
                      gallery=image_set("gallery"), extra_tests={"extra": (image_set("q2"), image_set("g2"))})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A flat folder of every bad file next to three good classes."""
    root = tmp_path_factory.mktemp("corpus")
    bad = write_bad_files(root / "bad")
    good, labels = _good_paths(root / "good")
    return root, bad, good, labels


def test_every_bad_file_is_skipped_in_every_split_with_its_named_reason(corpus):
    _, bad, good, labels = corpus
    paths = good + sorted(bad)
    names = [f"good class {c}" for c in labels] + ["bad ones"] * len(bad)
    splits = _every_split(paths, labels + [0] * len(bad), names)
    cleaned, report = validate_splits(splits)

    for split in SPLITS:
        skipped = {s.path: s for s in report.skipped if s.split == split}
        assert set(skipped) == set(bad), split
        for path, words in bad.items():
            assert words in skipped[path].reason, (split, path, skipped[path].reason)
            assert skipped[path].class_name == "bad ones"
    for image_set in (cleaned.train, cleaned.test, cleaned.query, cleaned.gallery, *cleaned.extra_tests["extra"]):
        assert image_set.paths == good
    assert cleaned.protocol == splits.protocol
    lines = report.lines()
    assert any(line.startswith("gallery: skipped ") and "one_bit.bmp (class bad ones): 1-bit BMP" in line
               for line in lines)
    # Every reason is a sentence of ours, not a raw TensorFlow op dump.
    assert not any("function_node" in s.reason or "Op:" in s.reason for s in report.skipped)


def test_check_image_files_answers_for_plain_paths(corpus):
    root, bad, good, _ = corpus
    reasons = check_image_files(list_image_files(root))
    assert set(reasons) == set(bad) | set(good)
    assert {p for p, r in reasons.items() if r is not None} == set(bad)
    with pytest.raises(ValueError, match="`channels` must be 1, 3 or 4"):
        check_image_files(good, channels=2)


def test_validated_splits_decode_in_the_eval_pipeline_and_unvalidated_ones_crash(corpus):
    _, bad, good, labels = corpus
    splits = _every_split(good + sorted(bad), labels + [0] * len(bad))
    cleaned, _ = validate_splits(splits)
    for image_set in (cleaned.test, cleaned.gallery):
        batches = [b.numpy() for b in make_eval_dataset(image_set, 16, batch_size=4)]
        assert sum(len(b) for b in batches) == len(good)
    with pytest.raises(tf.errors.InvalidArgumentError):  # what the check prevents
        [b for b in make_eval_dataset(splits.test, 16, batch_size=4)]


def test_odd_but_readable_formats_pass_and_decode_like_pillow(tmp_path):
    expected = write_odd_files(tmp_path)
    paths = sorted(str(tmp_path / name) for name in expected)
    image_set = ImageSet(labels=np.zeros(len(paths)), paths=paths)
    cleaned, report = validate_training_set(image_set)
    assert report.skipped == [] and cleaned.paths == paths
    for path in paths:
        name = os.path.basename(path)
        decoded = decode_image(tf.io.read_file(path), 3).numpy().astype(int)
        error = np.abs(decoded - expected[name].astype(int)).mean()
        assert decoded.shape == expected[name].shape, name
        assert error < (4.0 if name.endswith(".jpg") else 0.01), (name, error)


def test_grey_decoding_reads_gif_bmp_and_webp_too(tmp_path):
    # TensorFlow's GIF, BMP and WebP decoders refuse channels=1; decode_image converts from RGB.
    write_odd_files(tmp_path)
    for name in ("animated.gif", "grey_8bit.bmp", "rgba_32bit.bmp", "still.webp"):
        contents = tf.io.read_file(str(tmp_path / name))
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(contents, channels=1, expand_animations=False)
        rgb = tf.io.decode_image(contents, channels=3, expand_animations=False)
        np.testing.assert_array_equal(decode_image(contents, 1).numpy(), tf.image.rgb_to_grayscale(rgb).numpy())
    for name in ("grey.jpg", "palette.png", "rgb_16bit.png"):  # JPEG and PNG: TensorFlow's own grey decoding
        contents = tf.io.read_file(str(tmp_path / name))
        expected = tf.io.decode_image(contents, channels=1, expand_animations=False).numpy()
        np.testing.assert_array_equal(decode_image(contents, 1).numpy(), expected)
        graph = tf.function(lambda x: decode_image(x, 1))(contents)  # as in the serving graph
        np.testing.assert_array_equal(graph.numpy(), expected)
    paths = [str(tmp_path / name) for name in ("animated.gif", "grey_8bit.bmp", "still.webp")]
    assert check_image_files(paths, channels=1) == {p: None for p in paths}


def test_strict_mode_names_every_unreadable_file(corpus):
    _, bad, good, labels = corpus
    splits = _every_split(good + sorted(bad), labels + [0] * len(bad))
    with pytest.raises(InvalidImageError) as info:
        validate_splits(splits, strict=True)
    for path in bad:
        assert path in str(info.value)
    with pytest.raises(InvalidImageError, match="zero_bytes.jpg"):
        validate_training_set(splits.train, strict=True)


def test_cache_rechecks_only_changed_files(tmp_path):
    good, labels = _good_paths(tmp_path / "images")
    splits = _every_split(good, labels)
    cache = tmp_path / "run" / "image_check.json"

    same, first = validate_splits(splits, cache_path=cache)
    assert same is splits and first.decoded == len(good) and first.cached == 0
    _, second = validate_splits(splits, cache_path=cache)
    assert second.decoded == 0 and second.cached == len(good)

    with open(good[0], "rb") as f:
        data = f.read()
    with open(good[0], "wb") as f:  # now truncated: a different size
        f.write(data[: len(data) // 2])
    cleaned, third = validate_splits(splits, cache_path=cache)
    assert third.decoded == 1 and third.cached == len(good) - 1
    assert {s.path for s in third.skipped} == {good[0]} and good[0] not in cleaned.train.paths

    with open(good[0], "wb") as f:  # repaired
        f.write(data)
    cleaned, fourth = validate_splits(splits, cache_path=cache)
    assert fourth.decoded == 1 and fourth.skipped == [] and cleaned is splits

    os.chmod(good[1], 0o600)  # a permission change is a change too (its ctime moves)
    _, fifth = validate_splits(splits, cache_path=cache)
    assert fifth.decoded == 1

    _, grey = validate_splits(splits, cache_path=cache, channels=1)  # another decode: nothing reused
    assert grey.decoded == len(good)


def test_max_pixels_skips_before_decoding_and_is_configurable(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(constant_png(HUGE_SIDE, HUGE_SIDE))
    small, labels = _good_paths(tmp_path / "small", classes=1)
    image_set = ImageSet(labels=np.zeros(len(small) + 1), paths=small + [str(huge)])
    splits = DataSplits(train=image_set, test=image_set)
    cache = tmp_path / "check.json"

    _, report = validate_splits(splits, cache_path=cache)
    assert [s.path for s in report.skipped] == [str(huge)] * 2
    assert "8000 x 8000 = 64,000,000 pixels, more than max_pixels (40,000,000)" in report.skipped[0].reason
    _, lower = validate_splits(splits, cache_path=cache, max_pixels=1000)  # the small ones are 28 x 24
    assert lower.decoded == 0 and len(lower.skipped) == 2 and "more than max_pixels (1,000)" in lower.skipped[0].reason
    with pytest.raises(ValueError, match="no usable images left"):
        validate_splits(splits, cache_path=cache, max_pixels=600)
    cleaned, allowed = validate_splits(splits, cache_path=cache, max_pixels=None)
    assert allowed.decoded == 1 and allowed.skipped == [] and cleaned is splits
    with pytest.raises(ValueError, match="max_pixels"):
        validate_splits(splits, max_pixels=0)


_MEMORY_SCRIPT = """
import sys
from tfdnc.data.validation import validate_splits
from tfdnc.datasets.base import DataSplits, ImageSet

def peak_mb():  # VmHWM, not ru_maxrss: that one keeps the parent's peak across exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

folder, limit = sys.argv[1], None if sys.argv[2] == "none" else int(sys.argv[2])
small = ImageSet(labels=[0, 0], paths=[folder + "/small.png"] * 2)
validate_splits(DataSplits(train=small, test=small), workers=1)  # loads the decoders
base = peak_mb()
both = ImageSet(labels=[0, 0, 0], paths=[folder + "/small.png"] * 2 + [folder + "/huge.png"])
_, report = validate_splits(DataSplits(train=both, test=both), workers=1, max_pixels=limit)
print(len(report.skipped), peak_mb() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak RSS from /proc")
def test_the_pixel_limit_keeps_memory_flat(tmp_path):
    """Decoding 8000 x 8000 RGB takes 192 MB; skipping it by its header takes nothing."""
    (tmp_path / "huge.png").write_bytes(constant_png(HUGE_SIDE, HUGE_SIDE))
    (tmp_path / "small.png").write_bytes(constant_png(20, 20))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    figures = {}
    for limit in ("40000000", "none"):
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(tmp_path), limit], capture_output=True,
                             text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        skipped, growth = out.stdout.split()
        figures[limit] = (int(skipped), float(growth))
    assert figures["40000000"][0] == 2 and figures["40000000"][1] < 60, figures
    assert figures["none"][0] == 0 and figures["none"][1] > 150, figures  # the check would catch a decode


def test_in_memory_splits_are_checked_for_lone_classes_only():
    images = np.zeros((5, 4, 4, 1), np.uint8)
    train = ImageSet(labels=[0, 0, 1, 1, 2], images=images, name="toy/train")
    test = ImageSet(labels=[0, 1, 2, 3, 4], images=images, name="toy/test")
    cleaned, report = validate_splits(DataSplits(train=train, test=test))
    assert report.skipped == [] and report.lone_classes == [2]
    assert list(cleaned.train.labels) == [0, 0, 1, 1] and cleaned.test is test
    assert report.lines() == ["train: class 2 has fewer than 2 images (no positive pair); its images are skipped"]


def test_validate_training_set_keeps_its_report_for_train_run(tmp_path):
    good, labels = _good_paths(tmp_path, classes=2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_good_class(tmp_path / "lone", 1, seed=5)
    paths = good + [str(tmp_path / "broken.png"), str(tmp_path / "lone" / "good_0.jpg")]
    cleaned, report = validate_training_set(ImageSet(labels=labels + [0, 9], paths=paths), workers=2)
    assert cleaned.paths == good
    assert report.removed == 1 and report.unreadable[0][0].endswith("broken.png")
    assert report.lone_classes == [9]
    assert any("class 9 has fewer than 2 images" in line for line in report.lines())


def test_decode_image_refuses_channels_zero():
    # TensorFlow 2.21 corrupts the heap decoding an animated WebP with channels=0.
    with pytest.raises(ValueError, match="`channels` must be 1, 3 or 4"):
        decode_image(tf.constant(b""), 0)


def test_empty_class_folder_is_a_clear_loader_error(tmp_path):
    write_good_class(tmp_path / "train" / "cat", 2, seed=0)
    write_good_class(tmp_path / "test" / "dog", 2, seed=1)
    (tmp_path / "train" / "empty class").mkdir()
    with pytest.raises(DatasetError, match="empty class"):
        load_dataset("folder", str(tmp_path))


def test_bad_input_folder_dataset_validates_trains_and_evaluates(tmp_path):
    from tfdnc.backbones import build_backbone
    from tfdnc.training import DivideAndConquerSchedule
    from tfdnc.model import DivideAndConquerModel
    from tfdnc.evaluation.protocols import run_protocol

    expected = write_folder_dataset(tmp_path / "data")
    splits = load_dataset("folder", str(tmp_path / "data"))
    cleaned, report = validate_splits(splits, cache_path=tmp_path / "run" / "image_check.json")

    # Every bad file the loader lists is named, in its split, with its reason and class folder.
    for split in ("train", "test"):
        listed = set(getattr(splits, split).paths)
        skipped = {s.path: s for s in report.skipped if s.split == split}
        assert set(skipped) == {p for p in expected[split] if p in listed}
        for path, words in expected[split].items():
            if path in listed:
                assert words in skipped[path].reason
                assert skipped[path].class_name == os.path.relpath(path, tmp_path / "data" / split).split(os.sep)[0]
    lines = "\n".join(report.lines())
    assert "(class café crème)" in lines and "(class 猫 cat)" in lines and "(class naïve ü)" in lines
    assert "train: class 'solo'" in lines and "fewer than 2 images" in lines
    assert "train: class 'only bad'" in lines and "test: class 'only bad'" in lines
    assert "odd formats" not in lines  # CMYK, palette, alpha, 16-bit, animated GIF all kept
    report.write(tmp_path / "run" / "skipped.txt")
    assert (tmp_path / "run" / "skipped.txt").read_text(encoding="utf-8").splitlines() == report.lines()

    # A short Divide & Conquer run through the real pipelines, re-clustering once (which embeds the training set).
    keras.utils.set_random_seed(0)
    train = cleaned.train
    classes, contiguous = np.unique(train.labels, return_inverse=True)
    backbone = build_backbone("small_cnn", (24, 24, 3), width=8)
    model = DivideAndConquerModel(backbone, embedding_dim=8, k_max=2, mask_mode="learnable")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    sampler = ClusterBatchSampler(contiguous, classes_per_batch=2, images_per_class=2, seed=0)
    steps = 12
    dataset = make_train_dataset(train, sampler, steps, image_size=24, labels=contiguous)
    schedule = DivideAndConquerSchedule(sampler, train, k_final=2, image_size=24, recluster_every=1,
                                        kmeans_iters=5, state_dir=str(tmp_path / "run"), verbose=0)
    history = model.fit(dataset, steps_per_epoch=steps, epochs=2, callbacks=[schedule], verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert [record["K"] for record in schedule.history] == [1, 2]

    def embed(image_set):
        return model.predict(make_eval_dataset(image_set, 24, batch_size=8), verbose=0)

    result = run_protocol(cleaned, embed).to_dict()
    assert result and all(np.isfinite(v) for v in _numbers(result))


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, (int, float)):
        yield float(tree)


def test_skipped_txt_keeps_one_line_per_record_for_names_with_newlines_and_tabs(tmp_path):
    """A file (and a class folder) whose name holds a newline and a tab: each record stays one line."""
    import json

    for split, names in (("train", ["ant", "bee"]), ("test", ["cat", "line\nbreak\tclass"])):
        for c, name in enumerate(names):
            write_good_class(tmp_path / split / name, 3, seed=c)
    odd_class = tmp_path / "test" / "line\nbreak\tclass"
    bad = odd_class / "new\nline\tname.jpg"
    bad.write_bytes(b"not an image")
    also = tmp_path / "test" / "cat" / '"quoted" name.jpg'  # quotes inside a path: written as they are
    also.write_bytes(b"")
    os.symlink(".", tmp_path / "test" / "zz\nloop")  # a loop to the split, left out by the loader
    splits = load_dataset("folder", str(tmp_path))
    cleaned, report = validate_splits(splits)
    assert str(bad) not in cleaned.test.paths and "line\nbreak\tclass" in set(cleaned.test.extra["class_names"])
    report.write(tmp_path / "skipped.txt")
    lines = (tmp_path / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(report.lines())  # one line per record
    assert len(lines) == 3 == len(report.left_out) + len(report.skipped)
    loop, *unreadable = lines
    link = str(tmp_path / "test" / "zz\nloop")
    assert loop.startswith(f"test: skipped {json.dumps(link, ensure_ascii=False)} "
                           f'(class "zz\\nloop"): a symbolic link to ')
    assert f"test: skipped {also} (class cat): empty file (0 bytes)" in unreadable
    (quoted,) = [line for line in unreadable if line.startswith('test: skipped "')]
    field = quoted[len("test: skipped "):]
    path, end = json.JSONDecoder().raw_decode(field)  # a JSON string, read back whole
    rest = field[end:]
    assert path == str(bad)
    assert rest == (' (class "line\\nbreak\\tclass"): not an image: starts with '
                    "b'not an i', no JPEG/PNG/GIF/BMP/WebP header")
