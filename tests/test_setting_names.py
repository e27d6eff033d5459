"""One name per setting: removed names are refused naming the file and the setting; `recall_ks` is ignored."""

import json

import pytest

from tfdnc.config import SettingError, TrainConfig, build_parser


def test_a_renamed_setting_in_a_config_file_is_one_error_naming_the_file_and_the_setting(tmp_path):
    for old, new in (("lr", "learning_rate"), ("mask_lr", "mask_learning_rate"), ("loss_lr", "loss_learning_rate"),
                     ("symm", "symmetrical")):
        path = tmp_path / f"{old}.json"
        path.write_text(json.dumps({old: 1e-3}))
        with pytest.raises(SettingError) as caught:
            TrainConfig.load(str(path))
        message = str(caught.value)
        assert str(path) in message and repr(old) in message and repr(new) in message
        assert "\n" not in message


def test_recall_ks_of_an_old_config_file_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 3, "recall_ks": [1, 2, 4, 8]}))
    with pytest.warns(UserWarning, match="'recall_ks' was removed and is ignored"):
        config = TrainConfig.load(str(path))
    assert config.epochs == 3 and "recall_ks" not in config.to_dict()


def test_the_old_flags_are_gone():
    parser = build_parser()
    for old in (["--lr", "0.01"], ["--mask-lr", "0.5"], ["--loss-lr", "0.2"], ["--no-symm"], ["--recall-ks", "1"],
                ["--backup-every-steps", "10"]):
        with pytest.raises(SystemExit):
            parser.parse_args(old)
    new = parser.parse_args(["--learning-rate", "0.01", "--no-symmetrical"])
    assert new.learning_rate == 0.01 and new.symmetrical is False
    assert "deprecated" not in parser.format_help()


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
