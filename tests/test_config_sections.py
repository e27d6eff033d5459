"""The settings in sections: an old flat config.json loads into the same run; sections in and out; the loss's facts."""

import json
import re

import pytest

from tfdnc.config import DataConfig, LossConfig, ModelConfig, ScheduleConfig, SettingError, TrainConfig

# A config.json exactly as tfdnc 0.1.0 (main ec5b29b) wrote it for
# `train.py --loss margin --no-symmetrical --xbm-size 64 --epochs 3 --embedding-dim 32 --k-final 2`.
OLD_CONFIG = {
    "preset": None, "dataset": "shapes", "data_dir": None, "image_size": 32, "resize_size": None,
    "crop_scale": [0.5, 1.0], "crop_ratio": [0.75, 1.3333333333333333], "flip": False, "use_boxes": False,
    "cache_dir": None, "cache_max_side": None, "backbone": "small_cnn", "backbone_weights": None,
    "pixel_mode": None, "freeze_batchnorm": False, "batchnorm_momentum": None, "batchnorm_epsilon": None,
    "backbone_pooling": None, "freeze_backbone_layers": 0, "layer_decay": 1.0, "embedding_dim": 32, "k_final": 2,
    "growth": "double", "mask_mode": "learnable", "mask_loss_weight": 0.01, "mask_learning_rate": 0.001,
    "mask_lr_mult": None, "recluster_every": 2, "full_embedding_epoch": 8, "final_k1_epochs": 0,
    "freeze_backbone_after_recluster": False, "cluster_features": "penultimate", "kmeans_iters": 100,
    "loss": "margin", "loss_options": {}, "symmetrical": False, "xbm_size": 64, "xbm_start_step": 0,
    "xbm_batch_loss": False, "classes_per_batch": 4, "images_per_class": 8, "steps_per_epoch": None, "epochs": 3,
    "learning_rate": 0.001, "lr_schedule": "cosine", "warmup_epochs": 1, "lr_milestones": [0.5, 0.75],
    "lr_gamma": 0.1, "ema": False, "ema_momentum": 0.999, "weight_decay": 0.0001, "weight_decay_mode": "coupled",
    "mask_weight_decay": None, "loss_learning_rate": None, "seed": 0, "recall_ks": [1, 2, 4, 8], "eval_every": 1,
    "run_dir": "runs/default", "jit_compile": False, "mixed_precision": None, "strategy": "default",
}


def _load(tmp_path, values):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return TrainConfig.load(str(path))


def test_an_old_flat_config_json_loads_into_the_same_run(tmp_path):
    with pytest.warns(UserWarning, match="recall_ks"):
        config = _load(tmp_path, OLD_CONFIG)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved == {k: v for k, v in OLD_CONFIG.items() if k != "recall_ks"}
    # The same loss as tfdnc 0.1.0 built for it: a memory of 64 around a margin loss, one per learner.
    from tfdnc.losses import CrossBatchMemory, MarginLoss, loss_from_config

    loss = loss_from_config(config.loss_config, num_classes=100, embedding_dim=32, num_learners=2)
    expected = CrossBatchMemory(MarginLoss(), memory_size=64, embedding_dim=32, num_learners=2, start_step=0,
                                batch_loss=False)
    assert loss.get_config() == expected.get_config()
    # A resumed run compares the backup's settings with these: the same record, less recall_ks.
    assert set(saved) == set(OLD_CONFIG) - {"recall_ks"}


def test_a_config_in_sections_is_the_same_as_flat(tmp_path):
    flat = TrainConfig(epochs=4, loss="triplet", image_size=48, embedding_dim=32, seed=3)
    nested = _load(tmp_path, {"data": {"image_size": 48}, "model": {"embedding_dim": 32},
                              "loss": {"loss": "triplet"}, "schedule": {"epochs": 4}, "runtime": {"seed": 3}})
    assert nested == flat
    assert TrainConfig.from_sections(data=DataConfig(image_size=48), model=ModelConfig(embedding_dim=32),
                                     loss=LossConfig(loss="triplet"), schedule=ScheduleConfig(epochs=4)).seed == 0
    assert flat.data_config == DataConfig(image_size=48) and flat.schedule_config.epochs == 4
    assert flat.loss_config.loss == "triplet" and flat.model_config.embedding_dim == 32


def test_a_setting_in_the_wrong_section_or_twice_is_one_line_naming_the_file(tmp_path):
    from tfdnc.utils.errors import UserInputError

    for values, words in (({"data": {"epochs": 3}}, re.escape("section 'data' has no setting(s) ['epochs']")),
                          ({"epochs": 2, "schedule": {"epochs": 3}}, "both in section 'schedule'")):
        with pytest.raises(UserInputError, match=words) as caught:
            _load(tmp_path, values)
        assert "config.json" in str(caught.value) and "\n" not in str(caught.value)


def test_a_section_checks_its_own_settings():
    with pytest.raises(SettingError, match="--images-per-class"):
        DataConfig(images_per_class=1)
    with pytest.raises(SettingError, match="--k-final"):
        ModelConfig(embedding_dim=4, k_final=8)
    with pytest.raises(SettingError, match="--warmup-epochs"):
        ScheduleConfig(epochs=2, warmup_epochs=3)
    with pytest.raises(SettingError, match="--xbm-size"):
        LossConfig(loss="margin", xbm_size=16, symmetrical=True)


def test_the_loss_declares_the_facts_it_needs():
    from tfdnc.losses import ProxyAnchorLoss, loss_from_config

    loss = loss_from_config(LossConfig(loss="proxy_anchor", symmetrical=False), num_classes=7, embedding_dim=16,
                            num_learners=4)
    assert isinstance(loss, ProxyAnchorLoss) and (loss.num_classes, loss.embedding_dim, loss.num_learners) == (7, 16, 4)
    # A margin loss needs the classes only for a learnable beta per class.
    plain = loss_from_config(LossConfig(loss="margin"), num_classes=7, embedding_dim=16, num_learners=4)
    learnable = loss_from_config(LossConfig(loss="margin", loss_options={"learnable_beta": True}), num_classes=7,
                                 embedding_dim=16, num_learners=4)
    assert plain.num_classes is None and learnable.num_classes == 7
    with pytest.raises(TypeError, match="num_classes"):
        loss_from_config(LossConfig(loss="proxy_anchor", symmetrical=False), embedding_dim=16, num_learners=4)
