"""One name per setting: the new names everywhere, the old ones still accepted as deprecated aliases."""

import json

import pytest

from tfdnc.config import TrainConfig, build_parser


def test_old_config_keys_load_under_their_new_names(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"lr": 3e-4, "mask_lr": 3e-2, "loss_lr": 1e-2, "symm": False}))
    with pytest.warns(DeprecationWarning, match="'lr' is deprecated; it is now 'learning_rate'"):
        config = TrainConfig.load(str(path))
    assert (config.learning_rate, config.mask_learning_rate, config.loss_learning_rate, config.symmetrical) == (
        3e-4, 3e-2, 1e-2, False)
    assert config.lr == config.learning_rate  # old attribute names still read
    saved = config.to_dict()
    assert "learning_rate" in saved and "lr" not in saved and "symm" not in saved


def test_an_old_and_a_new_name_together_are_refused_naming_both():
    with pytest.raises(ValueError, match="'learning_rate'.*'lr'"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-3})


def test_old_flags_set_the_new_settings():
    parser = build_parser()
    old = parser.parse_args(["--lr", "0.01", "--mask-lr", "0.5", "--loss-lr", "0.2", "--no-symm"])
    new = parser.parse_args(["--learning-rate", "0.01", "--mask-learning-rate", "0.5", "--loss-learning-rate", "0.2",
                             "--no-symmetrical"])
    assert vars(old) == vars(new)
    assert new.learning_rate == 0.01 and new.symmetrical is False
    assert "--learning-rate" in parser.format_help() and "--lr: deprecated name" in parser.format_help()


def test_the_model_takes_k_final_and_still_reads_k_max():
    from tfdnc.backbones import build_backbone
    from tfdnc.model import DivideAndConquerModel, load_model

    backbone = build_backbone("small_cnn", (8, 8, 1), width=4)
    with pytest.warns(DeprecationWarning, match="k_final"):
        old = DivideAndConquerModel(backbone, embedding_dim=8, k_max=2)
    assert old.masks.k_max == 2 and old.get_config()["k_final"] == 2
    with pytest.raises(ValueError, match="not a .keras file"):
        load_model("runs/default/export/dnc")
    with pytest.raises(FileNotFoundError, match="nothing.keras"):
        load_model("nothing.keras")
