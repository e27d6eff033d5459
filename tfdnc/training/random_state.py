"""The random state a resumed run needs to repeat the uninterrupted one.

What draws random numbers during a tfdnc run, and how each one resumes:

- the batch sampler and the augmentation: seeded from (seed, epoch) by
  `ClusterBatchSampler.plan_epoch` and `make_train_dataset`, so they need
  no saved state;
- k-means: seeded from (seed, epoch) by the schedule;
- `keras.random.SeedGenerator`s (the margin loss's distance-weighted
  sampling, Keras's global generator behind unseeded `keras.random` calls
  such as Dropout): their state variables advance every step; saved here;
- NumPy's and Python's global generators (seeded by
  `keras.utils.set_random_seed` at start): saved here, so code drawing from
  them (user callbacks, scikit-learn without a seed) repeats too.

Example:
>>> save_random_state("gen/random.npz", model)
>>> restore_random_state("gen/random.npz", model)
"""

from __future__ import annotations

import json
import pickle
import random

import keras
import numpy as np


def seed_generators(model) -> dict[str, "keras.random.SeedGenerator"]:
    """The SeedGenerators whose state matters: Keras's global one, the model's layers', and those its loss
    (or an object the loss holds, such as a miner) keeps as an attribute."""
    found: dict[str, keras.random.SeedGenerator] = {}
    generator = _global_generator(create=False)
    if generator is not None:
        found["global"] = generator
    _find_generators(model, "model", found, depth=3, seen=set())
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 - Dropout and friends
        for name, value in list(vars(layer).items()):
            if isinstance(value, keras.random.SeedGenerator):
                found.setdefault(f"layer.{layer.path or layer.name}.{name}", value)
    return found


def _find_generators(obj, prefix: str, found: dict, depth: int, seen: set) -> None:
    """SeedGenerators among `obj`'s attributes, and among those of the losses, layers and
    tfdnc objects (a miner held by a loss) it holds, `depth` levels down."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in list(vars(obj).items()):
        if isinstance(value, keras.random.SeedGenerator):
            found.setdefault(f"{prefix}.{name}", value)
        elif depth > 0 and hasattr(value, "__dict__") and (
                isinstance(value, (keras.losses.Loss, keras.layers.Layer))
                or type(value).__module__.startswith("tfdnc.")):
            _find_generators(value, f"{prefix}.{name}", found, depth - 1, seen)


def _global_generator(create: bool):
    """Keras's global SeedGenerator (behind unseeded keras.random calls), or None."""
    try:
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import global_seed_generator
    except ImportError:  # a Keras without these private modules: the global generator is not saved
        return None
    if create:
        return global_seed_generator()
    return global_state.get_global_attribute("global_seed_generator")


def save_random_state(path: str, model) -> None:
    """Writes NumPy's, Python's and the model's SeedGenerator states to `path` (.npz)."""
    arrays = {f"seed:{name}": np.asarray(keras.ops.convert_to_numpy(g.state.value))
              for name, g in seed_generators(model).items()}
    arrays["numpy"] = np.frombuffer(pickle.dumps(np.random.get_state()), np.uint8)
    arrays["python"] = np.frombuffer(json.dumps(random.getstate(), default=list).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def restore_random_state(path: str, model) -> list[str]:
    """Restores what `save_random_state` wrote; returns the generators restored (unknown names are skipped)."""
    with np.load(path) as data:
        if "seed:global" in data.files:
            _global_generator(create=True)  # created lazily; the uninterrupted run had one by now
    generators = seed_generators(model)
    restored = []
    with np.load(path) as data:
        for key in data.files:
            if key.startswith("seed:") and key[5:] in generators:
                generators[key[5:]].state.assign(data[key])
                restored.append(key[5:])
        if "numpy" in data.files:
            np.random.set_state(pickle.loads(data["numpy"].tobytes()))  # noqa: S301 - our own file
        if "python" in data.files:
            version, state, gauss = json.loads(data["python"].tobytes().decode())
            random.setstate((version, tuple(state), gauss))
    return restored
