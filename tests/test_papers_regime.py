"""The papers' regime (issue 20 item 3): masks that divide at the papers' ratio, backbones pretrained off-target.

- Learnable masks moving 100x faster than the network (TPAMI's --mask-lr-mult=100) divide the
  embedding within a few dozen steps at K = 2; at the network's own rate they stay copies.
- `bench/suite.py pretrain` pools the other suite data sets for each target (no class of the
  target, no class merged across sets), and `suite.py run --regime papers` finds its backbones
  or names the command that makes them.
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np
import pytest

from tfdnc.training import DivideAndConquerSchedule
from tfdnc.data.pipeline import make_train_dataset
from tfdnc.data.sampling import ClusterBatchSampler
from tfdnc.datasets.base import DataSplits, ImageSet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import bench_peer  # noqa: E402
import suite  # noqa: E402


def _masks_after(tiny_model, splits, tmp_path, learning_rate: float, mask_learning_rate: float) -> dict:
    """Masks' statistics after 3 epochs x 30 steps, K 1 -> 2 after the first (60 steps at K = 2)."""
    keras.utils.set_random_seed(0)
    model = tiny_model(embedding_dim=16, k_max=2, lr=learning_rate, mask_learning_rate=mask_learning_rate,
                       loss="multi_similarity")
    sampler = ClusterBatchSampler(splits.train.labels, classes_per_batch=4, images_per_class=4, seed=0)
    dataset = make_train_dataset(splits.train, sampler, 30, image_size=16, crop_scale=(1.0, 1.0), flip=False)
    schedule = DivideAndConquerSchedule(sampler, splits.train, k_final=2, image_size=16, recluster_every=1,
                                        kmeans_iters=5, state_dir=str(tmp_path / f"state{mask_learning_rate:g}"),
                                        verbose=0)
    model.fit(dataset, steps_per_epoch=30, epochs=3, callbacks=[schedule], verbose=0)
    assert model.num_learners == 2
    return model.masks.statistics()


def test_masks_divide_at_the_papers_ratio_and_stay_copies_at_equal_rates(digits8, make_tiny_model, tmp_path):
    """Measured: cosine 0.72 (16 % of the entries off) at 100x, 0.9999 at 1x, same seed and steps."""
    papers = _masks_after(make_tiny_model, digits8, tmp_path, 1e-3, 100 * 1e-3)
    equal = _masks_after(make_tiny_model, digits8, tmp_path, 1e-3, 1e-3)
    assert equal["mask_cosine"] > 0.99 and equal["mask_off_share"] == pytest.approx(0.0)
    assert papers["mask_cosine"] < 0.9
    assert papers["mask_cosine"] < equal["mask_cosine"] - 0.1


def _fake_set(name: str, train_classes: int, test_classes: int) -> DataSplits:
    """A data set whose images carry their set's name (a fill value) and labels from 0 in each split."""
    fill = {"shapes": 10, "glyphs": 20, "textures": 30, "patches": 40}[name]
    def part(classes, first):
        labels = np.repeat(np.arange(first, first + classes), 2)
        return ImageSet(labels=labels, images=np.full((len(labels), 4, 4, 3), fill, np.uint8), name=name)
    return DataSplits(train=part(train_classes, 0), test=part(test_classes, train_classes), protocol="default")


def test_pretraining_source_pools_the_other_sets_without_the_target(monkeypatch):
    sizes = {"shapes": (5, 4), "glyphs": (3, 3), "textures": (4, 2), "patches": (2, 2)}
    monkeypatch.setattr("tfdnc.datasets.load_dataset", lambda name, *a, **k: _fake_set(name, *sizes[name]))
    source = suite.source_splits("glyphs")
    assert suite.sources_of("glyphs") == ["shapes", "textures", "patches"]
    assert 20 not in set(source.train.images.ravel()) | set(source.test.images.ravel())  # nothing of the target
    # every source class stays a class of its own (label 0 of shapes is not label 0 of textures)
    assert len(np.unique(source.train.labels)) == 5 + 4 + 2
    assert len(np.unique(source.test.labels)) == 4 + 2 + 2
    assert not set(source.train.labels.tolist()) & set(source.test.labels.tolist())  # split by class


def test_papers_regime_finds_each_targets_backbone_or_names_the_pretrain_command(tmp_path, monkeypatch):
    pattern = str(tmp_path / "backbones" / "{dataset}" / "model.keras")
    argv = ["run", "--regime", "papers", "--datasets", "shapes", "glyphs", "--settings", "k1", "dnc-learnable",
            "--seeds", "0", "--results", str(tmp_path / "r.jsonl"), "--run-root", str(tmp_path), "--threads", "1",
            "--set", f"backbone_weights={pattern}"]
    with pytest.raises(SystemExit, match=r"no file for \['shapes', 'glyphs'\].*suite.py pretrain"):
        suite.main(argv)
    for name in ("shapes", "glyphs"):
        os.makedirs(tmp_path / "backbones" / name)
        (tmp_path / "backbones" / name / "model.keras").write_bytes(b"")
    jobs = []
    not_trained = {"error": "not trained", "log": "-"}
    monkeypatch.setattr(bench_peer, "run_job", lambda job, log_dir: jobs.append(job) or not_trained)
    suite.main(argv)
    settings = {(j["meta"]["dataset"], j["config"]): j["settings"] for j in jobs}
    assert len(settings) == 4
    for (dataset, config), values in settings.items():
        assert values["backbone_weights"] == pattern.replace("{dataset}", dataset)  # its own, not another's
        assert values["mask_lr_mult"] == pytest.approx(100.0)  # masks 100x the network (TPAMI)
        assert values["learning_rate"] < 1e-3  # the network slower than from scratch
    assert settings[("shapes", "k1")]["k_final"] == 1 and settings[("shapes", "dnc-learnable")]["k_final"] == 4
