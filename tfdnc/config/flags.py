"""The command line of `python train.py` / `tfdnc train`: one flag per setting, grouped by section.

Also the argument helpers every tfdnc command uses (`ArgumentParser`: a bad
argument is one line and exit status 2; `positive_int`). No TensorFlow is
imported here: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from tfdnc.config.settings import RESUME_OVERRIDES, SECTIONS, TrainConfig

_HELP = {
    "dataset": "data set name (see tfdnc.datasets.DATASETS: shapes, mnist, cub, cars, sop, folder, csv, ...); "
               "default: folder when --data-dir is a folder, csv when it is a .csv file, else shapes",
    "data_dir": "folder holding the data set in its distributed layout (alone: a folder of class folders)",
    "backbone": "backbone name (small_cnn, resnet50, ...)",
    "backbone_weights": "None, 'imagenet' or a weights file (e.g. from tfdnc pretrain)",
    "k_final": "final number of learners K",
    "growth": "'double' (TPAMI: K doubles every T epochs) or 'fixed' (CVPR: K from the start)",
    "mask_mode": "'learnable' (TPAMI) or 'fixed' (CVPR contiguous blocks)",
    "recluster_every": "T: re-cluster every T epochs",
    "full_embedding_epoch": "epoch from which the loss uses the full embedding ('none': never)",
    "loss": "learner loss, a name in tfdnc.losses.LOSSES (margin, multi_similarity, triplet, ...)",
    "loss_options": "JSON object of loss arguments, e.g. '{\"alpha\": 0.2}'",
    "symmetrical": "Symmetrical Synthesis of hard negatives",
    "xbm_size": "entries per learner of a cross-batch memory (XBM) around the loss; 0 = off; needs a pair-based "
                "loss (margin, triplet, contrastive, multi_similarity) and --no-symmetrical",
    "xbm_start_step": "training steps before the cross-batch memory is used (the XBM authors' warm-up)",
    "xbm_batch_loss": "with a cross-batch memory, keep the batch's own loss and add the memory's "
                      "(the XBM authors' code; off: the memory alone, as pytorch-metric-learning)",
    "classes_per_batch": "P classes per batch",
    "images_per_class": "M images per class",
    "steps_per_epoch": "batches per epoch (default: ceil(train images / batch size))",
    "weight_decay_mode": "'coupled' (torch Adam L2, the references) or 'decoupled' (Keras Adam weight_decay)",
    "mask_lr_mult": "masks' learning rate as a multiple of --learning-rate (TPAMI --mask-lr-mult=100); "
                    "none: --mask-learning-rate",
    "lr_schedule": "learning-rate curve of network, masks and loss: 'constant' (the references), 'cosine' "
                   "(to 0 at the last step) or 'step' (x --lr-gamma at each --lr-milestones fraction)",
    "warmup_epochs": "epochs of linear learning-rate warm-up",
    "lr_milestones": "with --lr-schedule step: fractions of the run after which the rates drop",
    "lr_gamma": "with --lr-schedule step: the factor of each drop",
    "ema": "evaluate, save and export an exponential moving average of the network's weights (Keras use_ema)",
    "ema_momentum": "momentum of --ema's average (per step)",
    "batchnorm_momentum": "backbone BatchNorm momentum, Keras convention (torch's 0.1 = 0.9 here); none: default",
    "backbone_pooling": "hub: backbones: 'class' (class token) or 'mean' (mean of patch tokens); none: class token",
    "freeze_backbone_layers": "hub: backbones: the patch embedding and the first N transformer blocks do not train",
    "layer_decay": "hub: backbones: layer-wise lr decay, block i of L trains at lr * decay**(L + 1 - i); 1: off",
    "run_dir": "output folder of the run",
    "cache_dir": "decode the training images once into this folder and train from it",
    "cache_max_side": "shrink cached images to this shorter side (faster; None keeps full size)",
    "image_size": "side in pixels of the square crop the network sees (training and evaluation)",
    "resize_size": "evaluation: shorter side in pixels before the centre crop; none: --image-size",
    "crop_scale": "training crops: range of the area fraction of a random resized crop (default 1 1 with crop_ratio 1 1: the whole image, no crop; the papers: 0.08 1)",
    "crop_ratio": "training crops: range of the aspect ratio of a random resized crop",
    "flip": "random horizontal flips of the training images (on for photos; off for digits)",
    "use_boxes": "crop CUB / CARS images to their bounding boxes",
    "pixel_mode": "pixel normalisation before the backbone: caffe, torch, tf, scale or none; "
                  "default: what the backbone's pretrained weights expect",
    "freeze_batchnorm": "keep the backbone's BatchNorm statistics fixed (gamma and beta still train), as the papers",
    "batchnorm_epsilon": "backbone BatchNorm epsilon; none: the backbone's default (small_cnn: 1e-5, torch's)",
    "embedding_dim": "size of the full embedding, split among the K learners by the masks",
    "mask_loss_weight": "lambda: weight of the masks' orthogonality loss (learnable masks only)",
    "mask_learning_rate": "Adam learning rate of the masks, for --mask-mode learnable only "
                          "(the papers: 100x the network's)",
    "final_k1_epochs": "CVPR: the last N epochs train one learner on all the data (K = 1)",
    "freeze_backbone_after_recluster": "train only the embedding head, not the backbone, after the first "
                                       "re-clustering",
    "cluster_features": "what k-means clusters the training images by: penultimate (backbone features) or "
                        "embedding",
    "kmeans_iters": "most Lloyd iterations of each k-means re-clustering",
    "epochs": "training epochs in all",
    "learning_rate": "Adam learning rate of the network (backbone and head)",
    "weight_decay": "L2 weight decay of the network (see --weight-decay-mode)",
    "mask_weight_decay": "coupled L2 weight decay of the masks (default: none = the network's --weight-decay)",
    "loss_learning_rate": "Adam learning rate of the loss's own parameters, e.g. the margin loss's beta "
                          "(default: none = the network's --learning-rate)",
    "seed": "random seed of weights, sampling, augmentation and k-means",
    "eval_every": "evaluate on the test split every N epochs (and after the last)",
    "jit_compile": "compile the training step with XLA",
    "mixed_precision": "Keras mixed precision policy: mixed_float16 or mixed_bfloat16; none: float32",
    "strategy": "tf.distribute strategy: default (one device), mirrored (all local GPUs) or multi-worker "
                "(TF_CONFIG)",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with an error as one line naming the argument: `PROG: error: ...`, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the error names the argument)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="train.py",
        description="Train a Divide & Conquer embedding, evaluate it and export a SavedModel.",
        # No abbreviations: a removed flag (--mask-lr, --no-symm) would otherwise silently set the setting it
        # abbreviates (--mask-lr-mult, --no-symmetrical).
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="JSON file of TrainConfig settings (flags override it)")
    parser.add_argument("--preset", help="paper preset, e.g. tpami-cub (see tfdnc.presets)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest complete backup generation; "
                             f"only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDES)} may change "
                             "(recorded in config.json and resumes.json)")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export a SavedModel into RUN_DIR/export at the end")
    parser.add_argument("--strict-images", action="store_true",
                        help="fail on an unreadable image instead of skipping it")
    parser.add_argument("--verbose", type=int, default=1, help="0 silent, 1 progress bars, 2 one line per epoch")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error in the settings or data too (not only one line)")
    hints = typing.get_type_hints(TrainConfig)
    for section_name, section in SECTIONS.items():
        group = parser.add_argument_group(f"{section_name} settings ({section.__name__})")
        for f in dataclasses.fields(section):
            if f.name != "preset":  # the --preset flag above sets it
                _add_setting(group, f, hints[f.name])
    return parser


def _add_setting(group, f: dataclasses.Field, kind) -> None:
    """The flag of one setting: --name-with-dashes, typed from the setting's hint."""
    flag = "--" + f.name.replace("_", "-")
    text = _HELP.get(f.name, f.name.replace("_", " "))
    # SUPPRESS: a flag not given leaves no attribute, so "none" can set None.
    unset = argparse.SUPPRESS
    if f.name != "dataset" and "(default:" not in text:  # dataset's depends on --data-dir (said in its help)
        text += f" (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"
    if kind is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=text)
    elif f.name == "loss_options":
        group.add_argument(flag, type=_json_object, default=unset, help=text)
    elif typing.get_origin(kind) is tuple:
        elem = float if typing.get_args(kind)[0] is float else int
        group.add_argument(flag, type=elem, nargs="+", default=unset, help=text)
    else:
        group.add_argument(flag, type=_scalar_parser(kind), default=unset, help=text)


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (the error names the argument)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"alpha\": 0.2}}', got {text!r}")
    return value


def _scalar_parser(kind):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    optional = type(None) in typing.get_args(kind)

    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = getattr(base, "__name__", "value")
    return parse
