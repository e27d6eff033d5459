"""Learning-rate schedules of a run, driven by the network optimizer's step count.

`WarmupDecay` is a Keras `LearningRateSchedule`: a linear warm-up over the
first `warmup_steps`, then "constant", "cosine" (to 0 at `total_steps`) or
"step" (times `gamma` at each milestone, a fraction of `total_steps`). Being
a function of `optimizer.iterations`, which every backup generation saves,
a resumed run continues the schedule exactly where it stopped.

The masks' and the loss's optimizers follow the same curve, scaled to their
own base rates (`follow_schedule`), read from the *network* optimizer's step
count: the mask optimizer restarts its own count when K grows (TPAMI's fresh
parameter group, `DivideAndConquerModel.reset_mask_optimizer`), which must
not restart the warm-up or the decay.

Neither reference decays the learning rate: the TPAMI code builds a StepLR
with `step_size=inf` (CompVis/metric-learning-divide-and-conquer-improved:
experiment/margin_loss_resnet50.py:200-205, `--lr-step` "Currently disabled"
:361-362; train.py:495 "Currently LR scheduler is completely disabled"), and
the CVPR code trains at a constant 1e-5 (CompVis/metric-learning-divide-and-
conquer: config.json "opt"). "constant" is therefore the references' regime.

Examples:
    >>> schedule = WarmupDecay(1e-3, total_steps=1000, warmup_steps=100, decay="cosine")
    >>> optimizer = keras.optimizers.Adam(schedule)
    >>> float(schedule(1000))
    0.0
"""

from __future__ import annotations

import math

import keras
from keras import ops

LR_SCHEDULES = ("constant", "cosine", "step")


@keras.saving.register_keras_serializable(package="tfdnc")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then constant, cosine or step decay.

    Args:
        learning_rate: the base (peak) learning rate.
        total_steps: steps of the whole run (epochs x steps per epoch).
        warmup_steps: steps of the linear warm-up from `learning_rate /
            warmup_steps` to `learning_rate` (0: none).
        decay: "constant", "cosine" (half a cosine from the end of the
            warm-up to 0 at `total_steps`) or "step".
        milestones: with "step", fractions of `total_steps` after which the
            rate is multiplied by `gamma`.
        gamma: the factor of each step.

    Examples:
        >>> s = WarmupDecay(1.0, total_steps=100, decay="step", milestones=(0.5,), gamma=0.1)
        >>> [round(float(s(n)), 3) for n in (0, 49, 50, 99)]
        [1.0, 1.0, 0.1, 0.1]
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0, decay: str = "constant",
                 milestones: tuple = (0.5, 0.75), gamma: float = 0.1):
        if decay not in LR_SCHEDULES:
            raise ValueError(f"WarmupDecay: `decay` must be one of {LR_SCHEDULES}, got {decay!r}")
        if not learning_rate > 0:
            raise ValueError(f"WarmupDecay: `learning_rate` must be > 0, got {learning_rate}")
        if int(total_steps) < 1:
            raise ValueError(f"WarmupDecay: `total_steps` must be >= 1, got {total_steps}")
        if not 0 <= int(warmup_steps) <= int(total_steps):
            raise ValueError(f"WarmupDecay: `warmup_steps` must be in [0, total_steps={total_steps}], "
                             f"got {warmup_steps}")
        if any(not 0 < float(m) < 1 for m in milestones):
            raise ValueError(f"WarmupDecay: `milestones` must be fractions in (0, 1), got {milestones}")
        if not 0 < gamma <= 1:
            raise ValueError(f"WarmupDecay: `gamma` must be in (0, 1], got {gamma}")
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.milestones = tuple(sorted(float(m) for m in milestones))
        self.gamma = float(gamma)

    def shape(self, step):
        """The schedule's factor at `step` (1 at the peak); the rate is `learning_rate * shape(step)`."""
        step = ops.cast(step, "float32")
        factor = ops.ones(())
        if self.warmup_steps:
            factor = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if self.decay == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            factor = factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
        elif self.decay == "step":
            for fraction in self.milestones:
                boundary = float(round(fraction * self.total_steps))
                factor = factor * ops.where(step >= boundary, self.gamma, 1.0)
        return factor

    def __call__(self, step):
        return self.learning_rate * self.shape(step)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "decay": self.decay, "milestones": list(self.milestones),
                "gamma": self.gamma}


def base_optimizer(optimizer):
    """The optimizer itself, or the one a `LossScaleOptimizer` wraps."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def follow_schedule(optimizer, schedule: WarmupDecay, base_rate: float, leader) -> None:
    """Makes `optimizer` run at `base_rate * schedule.shape(leader.iterations)`.

    `leader` is the network optimizer, whose step count the backups save.
    The optimizer's own learning-rate variable stays tracked (unused), so
    its saved state keeps the layout of a constant-rate model's and a run's
    model.keras loads into the model its config builds without a warning.
    """
    lead = base_optimizer(leader)
    # Keras calls a callable learning rate with no argument each step (base_optimizer._get_current_learning_rate).
    optimizer._learning_rate = lambda: base_rate * schedule.shape(lead.iterations)
