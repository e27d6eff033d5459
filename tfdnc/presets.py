"""The papers' training settings by name: `python train.py --preset tpami-sop`.

A preset is a dict of `TrainConfig` fields; flags given on the command line
override it. Each preset names the published figure it aims at (Recall@1 in
percent, from the method reference, SPEC.md section 1):

=====================  ========  =====  ===========================================
preset                 R@1 (%)   NMI    setting
=====================  ========  =====  ===========================================
cvpr2019-cub           65.9             CVPR 2019: d=128, K=8 fixed blocks
cvpr2019-cars          84.6
cvpr2019-sop           75.9
cvpr2019-inshop        85.7
cvpr2019-vehicleid     82.9             (large test set, query vs gallery)
tpami-cub[-learnable]  67.7      69.8   TPAMI code: d=512, K 1->32, learnable masks
tpami-cars[...]        86.9
tpami-sop[...]         79.8
tpami-inshop[...]      90.5
tpami-vehicleid[...]   93.9*
tpami-cub-fixed        67.4             TPAMI code: d=512, K 1->32, fixed blocks
tpami-cars-fixed       87.2
tpami-sop-fixed        79.5
tpami-inshop-fixed     89.8
tpami-vehicleid-fixed  94.0*
tpami-cub-dinov2       -                TPAMI schedule, DINOv2 ViT-S/14 (KerasHub),
tpami-...-dinov2                        Hyp-ViT's lr 1e-5 AdamW, 224 px, crop 0.2-1
=====================  ========  =====  ===========================================

\\* the TPAMI repository evaluates VehicleID all-vs-all; tfdnc evaluates it
query vs gallery as the papers' tables do, so these two are not comparable.

Settings common to all presets (both papers): ResNet-50 with ImageNet
weights and frozen BatchNorm statistics (gamma / beta still train), margin loss
(alpha 0.2, beta 1.2), Adam lr 1e-5, coupled L2 weight decay 1e-4, 224 px
RandomResizedCrop (scale 0.08-1) + flips for training, resize 256 + centre
crop 224 for evaluation, re-clustering of penultimate features every T = 2
epochs, full embedding trained from epoch 80.

- CVPR 2019 (`CompVis/metric-learning-divide-and-conquer`): negatives are
  the closest ones beyond distance 0.5; K = 8 from the first clustering, fixed contiguous blocks of d/K dims, batches of 20
  classes x 4 images, 200 epochs of which the last 10 train on all data
  together (K = 1).
- TPAMI 2021 (`CompVis/metric-learning-divide-and-conquer-improved`, its
  reference command): distance-weighted negatives; K grows 1, 2, 4, ..., 32
  by re-clustering at the current K and splitting every cluster
  at each re-clustering, mask loss weight 0.01, mask lr 1e-3 (100x), the
  backbone frozen on the epoch after each re-clustering, batches of 40
  classes x 2 images, 180 epochs.

`papers-emulated` is no paper's figure but the papers' regime for a backbone
the user pretrained (or their ImageNet weights): frozen BatchNorm statistics,
the network at 1e-4, masks 100x faster, most epochs at the final K; give it
`--backbone-weights` (docs/bench/method.md measures it).

Examples:
    >>> from tfdnc.presets import get_preset, config_from_preset
    >>> get_preset("tpami-sop")["embedding_dim"]
    512
    >>> config = config_from_preset("cvpr2019-cub", data_dir="/data/CUB_200_2011", epochs=5)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

_COMMON: dict[str, Any] = {
    "backbone": "resnet50",
    "backbone_weights": "imagenet",
    "freeze_batchnorm": True,
    "image_size": 224,
    "resize_size": 256,
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "flip": True,
    "use_boxes": False,
    "loss": "margin",
    "loss_options": {},
    "learning_rate": 1e-5,
    # Both references train at a constant rate (TPAMI experiment/margin_loss_resnet50.py:200-205:
    # StepLR with step_size=inf; CVPR config.json "opt"), not TrainConfig's cosine default.
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    # torch Adam's coupled L2 on the network and (TPAMI, --mask-wd-mult=1) the
    # masks: CompVis/metric-learning-divide-and-conquer-improved README.md:34-36
    "weight_decay": 1e-4,
    "weight_decay_mode": "coupled",
    "recluster_every": 2,
    "cluster_features": "penultimate",
    "kmeans_iters": 100,
    "full_embedding_epoch": 80,
}

_CVPR: dict[str, Any] = {
    **_COMMON,
    "embedding_dim": 128,
    # The CVPR sampler: closest negatives beyond distance 0.5
    # (CompVis/metric-learning-divide-and-conquer: lib/loss/sampler.py:25-78).
    "loss_options": {"negative_sampling": "closest_beyond_cutoff"},
    "k_final": 8,
    "growth": "fixed",
    "mask_mode": "fixed",
    "classes_per_batch": 20,
    "images_per_class": 4,
    "epochs": 200,
    "final_k1_epochs": 10,
    "freeze_backbone_after_recluster": False,
}

_TPAMI: dict[str, Any] = {
    **_COMMON,
    "embedding_dim": 512,
    "k_final": 32,
    "growth": "double",
    "mask_mode": "learnable",
    "mask_loss_weight": 0.01,
    # masks at 100x the network's rate, relative as TPAMI's --mask-lr-mult=100
    # (CompVis/metric-learning-divide-and-conquer-improved: README.md:35; experiment/margin_loss_resnet50.py:196)
    "mask_lr_mult": 100.0,
    "classes_per_batch": 40,
    "images_per_class": 2,
    "epochs": 180,
    "final_k1_epochs": 0,
    "freeze_backbone_after_recluster": True,
}

# The TPAMI setting with a pretrained transformer in place of the ResNet-50
# (`tpami-<dataset>-dinov2`). No Divide & Conquer paper trains a
# transformer, so the D&C schedule (K 1 -> 32, masks, P x M, epochs) stays
# TPAMI's; the transformer's own settings are those of the metric-learning
# code that fine-tunes DINO ViT-S/16 on CUB and SOP, Hyp-ViT (Ermolov et al.,
# CVPR 2022; htdt/hyp_metric), cited per line.
_TPAMI_DINOV2: dict[str, Any] = {
    **_TPAMI,
    # ViT-S/14 trained by DINOv2 (KerasHub preset, 22M parameters; downloaded
    # by KerasHub from Kaggle on first use): the DINOv2 successor of the DINO
    # ViT-S/16 Hyp-ViT fine-tunes (htdt/hyp_metric train.py, Config.model).
    "backbone": "hub:dinov2_small",
    "backbone_weights": None,  # the preset brings its weights
    "freeze_batchnorm": False,  # no BatchNorm in a transformer
    "backbone_pooling": "class",  # Hyp-ViT embeds the class token (model.py, HeadSwitch: body(x) -> head)
    # 224 px crops (224 = 16 patches of 14) with RandomResizedCrop scale 0.2-1
    # (htdt/hyp_metric train.py, train_tr); evaluation keeps the papers' resize 256 + crop 224.
    "image_size": 224,
    "resize_size": 256,
    "crop_scale": (0.2, 1.0),
    # AdamW at lr 1e-5 with torch's default decoupled weight decay 0.01
    # (htdt/hyp_metric train.py: Config.lr, optim.AdamW(model.parameters(), lr=cfg.lr)).
    "learning_rate": 1e-5,
    "weight_decay": 1e-2,
    "weight_decay_mode": "decoupled",
    # Hyp-ViT trains every block (Config.freeze = None) with one learning rate.
    "freeze_backbone_layers": 0,
    "layer_decay": 1.0,
}

_VEHICLEID_NOTE = (
    "the TPAMI repository evaluates VehicleID all-vs-all; tfdnc evaluates query vs "
    "gallery (large test set), so this figure is not comparable"
)


@dataclass(frozen=True)
class Preset:
    """A named paper setting and the published result it targets.

    Attributes:
        name: e.g. "tpami-sop".
        config: `TrainConfig` fields.
        source: the paper or code the setting comes from.
        published: the published figures (percent), e.g. {"recall@1": 79.8}.
        note: caveats about comparing with `published`.
    """

    name: str
    config: Mapping[str, Any]
    source: str
    published: Mapping[str, float]
    note: str = ""
    description: str = field(default="", compare=False)


def _presets() -> dict[str, Preset]:
    # dataset -> (CVPR R@1, TPAMI fixed R@1, TPAMI learnable R@1, TPAMI learnable NMI)
    published = {
        "cub": (65.9, 67.4, 67.7, 69.8),
        "cars": (84.6, 87.2, 86.9, None),
        "sop": (75.9, 79.5, 79.8, None),
        "inshop": (85.7, 89.8, 90.5, None),
        "vehicleid": (82.9, 94.0, 93.9, None),
    }
    presets = {}
    for dataset, (cvpr, fixed, learnable, nmi) in published.items():
        data = {"dataset": dataset}
        name = f"cvpr2019-{dataset}"
        presets[name] = Preset(
            name, {**_CVPR, **data, "run_dir": f"runs/{name}"},
            source="Sanakoyeu et al., CVPR 2019 (d=128, K=8, fixed masks)",
            published={"recall@1": cvpr},
            note="large test set, query vs gallery" if dataset == "vehicleid" else "",
            description=f"CVPR 2019 on {dataset}",
        )
        note = _VEHICLEID_NOTE if dataset == "vehicleid" else ""
        for mode, r1 in (("learnable", learnable), ("fixed", fixed)):
            name = f"tpami-{dataset}-{mode}"
            figures = {"recall@1": r1}
            if mode == "learnable" and nmi is not None:
                figures["nmi"] = nmi
            presets[name] = Preset(
                name, {**_TPAMI, **data, "mask_mode": mode, "run_dir": f"runs/{name}"},
                source=f"Sanakoyeu et al., TPAMI 2021, reference code (d=512, K=32, {mode} masks)",
                published=figures, note=note,
                description=f"TPAMI 2021 on {dataset}, {mode} masks",
            )
        name = f"tpami-{dataset}-dinov2"
        presets[name] = Preset(
            name, {**_TPAMI_DINOV2, **data, "run_dir": f"runs/{name}"},
            source="TPAMI 2021 schedule with a DINOv2 ViT-S/14 (optimisation: Hyp-ViT, CVPR 2022)",
            published={},
            note=f"no published D&C figure with a transformer; the ResNet-50 TPAMI figure is R@1 {learnable}"
            + (f" ({note})" if note else ""),
            description=f"TPAMI 2021 on {dataset} with a DINOv2 ViT-S/14 backbone",
        )
        # The TPAMI method proper uses learnable masks: the bare name means that.
        alias = f"tpami-{dataset}"
        learnable_preset = presets[f"tpami-{dataset}-learnable"]
        presets[alias] = Preset(
            alias, {**learnable_preset.config, "run_dir": f"runs/{alias}"},
            source=learnable_preset.source, published=learnable_preset.published,
            note=learnable_preset.note, description=learnable_preset.description,
        )
    return presets


# The papers' regime on any backbone, with its weights given by the user: a pretrained backbone
# (ImageNet weights, or a supervised K = 1 run on another data set: --backbone-weights RUN/model.keras)
# fine-tuned slowly with frozen BatchNorm statistics while the masks move 100x faster (TPAMI
# --mask-lr-mult=100), and most steps at the final K (K 1 -> 2 -> 4 after the first two epochs).
# The rates are one tenth of tfdnc's from-scratch 1e-3 (the papers' ResNet-50 trains at 1e-5 for
# 100k+ steps; a few hundred steps at 1e-5 hardly move a network, nor masks at 1e-3).
# docs/bench/method.md measures it; see docs/guides/divide-and-conquer.md for the command pair.
_PAPERS_EMULATED: dict[str, Any] = {
    "dataset": "shapes",
    "freeze_batchnorm": True,
    "learning_rate": 1e-4,
    "mask_lr_mult": 100.0,
    "lr_schedule": "constant",  # as measured in docs/bench/method.md (and as the references train)
    "warmup_epochs": 0,
    "k_final": 4,
    "growth": "double",
    "recluster_every": 1,
    "full_embedding_epoch": None,
    "epochs": 10,
    "run_dir": "runs/papers-emulated",
}


def _regime_presets() -> dict[str, Preset]:
    return {
        "papers-emulated": Preset(
            "papers-emulated", _PAPERS_EMULATED,
            source="TPAMI 2021's learning-rate ratio and schedule proportions on a backbone the user pretrained",
            published={},
            note="give --backbone-weights (a run's model.keras, or 'imagenet' with --backbone resnet50)",
            description="the papers' regime: pretrained backbone, slow network, masks 100x",
        ),
    }


PRESETS: dict[str, Preset] = {**_presets(), **_regime_presets()}


def get_preset(name: str) -> dict[str, Any]:
    """The `TrainConfig` fields of preset `name` (a fresh copy).

    Raises:
        ValueError naming the known presets if `name` is not one.
    """
    if name not in PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(dict(PRESETS[name].config))


def config_from_preset(name: str, **overrides: Any):
    """A `TrainConfig` from preset `name` with `overrides` (explicit flags) on top.

    Raises ValueError naming the setting for an unknown field or bad value.
    """
    from tfdnc.config import TrainConfig

    values = get_preset(name)
    values.update(overrides)
    return TrainConfig.from_dict(values, source=f"preset {name!r}")


def presets_table() -> str:
    """A Markdown table of the presets and the figures they target."""
    lines = ["| preset | data set | d | K | masks | P x M | epochs | published | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(PRESETS):
        preset = PRESETS[name]
        if not preset.published:
            continue  # a regime for the user's own weights (papers-emulated), not a paper's figure
        c = preset.config
        figures = ", ".join(f"{k.upper() if k == 'nmi' else 'R@1'} {v}" for k, v in preset.published.items())
        if preset.note:
            figures += "*"
        lines.append(
            f"| `{name}` | {c['dataset']} | {c['embedding_dim']} | {c['k_final']} | {c['mask_mode']} | "
            f"{c['classes_per_batch']} x {c['images_per_class']} | {c['epochs']} | {figures} | {preset.source} |"
        )
    return "\n".join(lines)
