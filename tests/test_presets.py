"""Paper presets: valid configs, the settings that distinguish them, overrides."""

from __future__ import annotations

import pytest

from tfdnc.config import TrainConfig
from tfdnc.evaluation.protocols import get_protocol
from tfdnc.presets import PRESETS, config_from_preset, get_preset, presets_table

DATASETS = ("cub", "cars", "sop", "inshop", "vehicleid")
REGIME_PRESETS = ("papers-emulated",)  # a training regime for the user's own backbone weights, no paper figure


def test_every_named_preset_exists_and_builds_a_valid_config():
    expected = {f"cvpr2019-{d}" for d in DATASETS} | {
        f"tpami-{d}{suffix}" for d in DATASETS for suffix in ("", "-fixed", "-learnable", "-dinov2")
    }
    assert set(PRESETS) == expected | set(REGIME_PRESETS)
    for name in PRESETS:
        config = TrainConfig(**get_preset(name))  # validates
        assert config.run_dir == f"runs/{name}"
        if name in REGIME_PRESETS:
            continue
        # the training-time recall is the benchmark's protocol's (TrainConfig.recall_ks, unused, was removed)
        assert get_protocol(config.dataset).recall_ks
        if name.endswith("-dinov2"):  # no paper trains D&C on a transformer
            assert PRESETS[name].published == {} and "no published" in PRESETS[name].note
        else:
            assert PRESETS[name].published["recall@1"] > 50


@pytest.mark.parametrize("dataset", DATASETS)
def test_paper_settings(dataset):
    cvpr = config_from_preset(f"cvpr2019-{dataset}")
    assert (cvpr.embedding_dim, cvpr.k_final, cvpr.mask_mode, cvpr.growth) == (128, 8, "fixed", "fixed")
    assert cvpr.batch_size == 80 and cvpr.final_k1_epochs == 10
    for variant, mode in (("", "learnable"), ("-learnable", "learnable"), ("-fixed", "fixed")):
        tpami = config_from_preset(f"tpami-{dataset}{variant}")
        assert (tpami.embedding_dim, tpami.k_final, tpami.growth, tpami.mask_mode) == (512, 32, "double", mode)
        assert tpami.batch_size == 80 and tpami.images_per_class == 2
        assert tpami.mask_rate == pytest.approx(100 * tpami.learning_rate)
        # relative, as TPAMI's --mask-lr-mult: a user's --learning-rate moves the masks' rate too
        assert config_from_preset(f"tpami-{dataset}{variant}", learning_rate=2e-5).mask_rate == pytest.approx(2e-3)
    for config in (cvpr, tpami):
        assert config.backbone == "resnet50" and config.backbone_weights == "imagenet"
        assert config.freeze_batchnorm and config.flip
        assert (config.image_size, config.eval_resize) == (224, 256)
        assert config.full_embedding_epoch == 80 and config.recluster_every == 2
    # the learnable and fixed TPAMI variants differ in the masks only
    fixed, learnable = get_preset(f"tpami-{dataset}-fixed"), get_preset(f"tpami-{dataset}-learnable")
    assert {k for k in fixed if fixed[k] != learnable[k]} == {"mask_mode", "run_dir"}
    assert get_preset(f"tpami-{dataset}") == {**learnable, "run_dir": f"runs/tpami-{dataset}"}
    # the transformer variant keeps the TPAMI schedule and changes the backbone's settings only
    dinov2 = get_preset(f"tpami-{dataset}-dinov2")
    assert {k for k in dinov2 if dinov2[k] != learnable.get(k)} == {
        "backbone", "backbone_weights", "freeze_batchnorm", "backbone_pooling", "crop_scale", "weight_decay",
        "weight_decay_mode", "freeze_backbone_layers", "layer_decay", "run_dir"}
    assert (dinov2["image_size"], dinov2["learning_rate"]) == (224, 1e-5)


def test_published_targets_follow_the_spec_table():
    r1 = {name: p.published["recall@1"] for name, p in PRESETS.items() if p.published}
    assert r1["cvpr2019-sop"] == 75.9 and r1["tpami-sop"] == 79.8 and r1["tpami-sop-fixed"] == 79.5
    assert PRESETS["tpami-cub"].published["nmi"] == 69.8
    assert "all-vs-all" in PRESETS["tpami-vehicleid"].note
    assert "`tpami-inshop-fixed`" in presets_table()


def test_overrides_and_errors():
    config = config_from_preset("tpami-cub", data_dir="/data/cub", epochs=3, k_final=4)
    assert (config.data_dir, config.epochs, config.k_final, config.embedding_dim) == ("/data/cub", 3, 4, 512)
    values = get_preset("cvpr2019-sop")
    values["loss_options"]["margin"] = 0.5
    # a fresh copy every time; the CVPR presets take the CVPR code's negatives
    assert get_preset("cvpr2019-sop")["loss_options"] == {"negative_sampling": "closest_beyond_cutoff"}
    with pytest.raises(ValueError, match="--preset: unknown preset 'tpami-mnist'; choose one of"):
        get_preset("tpami-mnist")
    with pytest.raises(ValueError, match="unknown setting"):
        config_from_preset("tpami-cub", colour="blue")
    with pytest.raises(ValueError, match="--k-final"):
        config_from_preset("cvpr2019-cub", k_final=6, embedding_dim=128)


def test_presets_follow_the_reference_code():
    cvpr, tpami = get_preset("cvpr2019-cub"), get_preset("tpami-cub")
    assert cvpr["loss_options"]["negative_sampling"] == "closest_beyond_cutoff"
    assert tpami["loss_options"].get("negative_sampling", "distance_weighted") == "distance_weighted"
    for values in (cvpr, tpami):
        assert values["weight_decay_mode"] == "coupled" and values["weight_decay"] == 1e-4
        assert values["freeze_batchnorm"] is True
    from tfdnc.losses import get_loss

    assert get_loss("margin", **cvpr["loss_options"]).negative_sampling == "closest_beyond_cutoff"


def test_papers_emulated_regime_moves_the_masks_100x_faster_than_a_pretrained_network():
    config = config_from_preset("papers-emulated", backbone_weights="runs/source/model.keras")
    assert config.freeze_batchnorm and config.full_embedding_epoch is None
    assert config.mask_rate == pytest.approx(100 * config.learning_rate)
    assert config.learning_rate < TrainConfig().learning_rate
    # most epochs at the final K: K doubles after each of the first log2(K) epochs
    assert config.recluster_every == 1 and config.epochs >= 2 * (config.k_final.bit_length() - 1)
