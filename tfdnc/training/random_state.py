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

Every part is stored as a plain array and read with `allow_pickle=False`:
run directories are copied and shared, and a pickle runs code as it loads
(issue 19). A random.npz in the earlier pickled format is refused unread.

Examples:
    >>> model = tfdnc.load_model("runs/default/model.keras")
    >>> import os
    >>> os.makedirs("gen")
    >>> save_random_state("gen/random.npz", model)
    >>> restore_random_state("gen/random.npz", model)   # the seed generators it restored: none in this model
    []
"""

from __future__ import annotations

import random

import keras
import numpy as np

from tfdnc.utils.npz import UnsafeFileError, read_npz


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


# NumPy's legacy generator state, np.random.get_state(): ("MT19937", keys, pos,
# has_gauss, cached_gaussian), and Python's, random.getstate(): (version,
# 625 ints, gauss_next or None); each part stored as its own plain array.
_NUMPY_PARTS = ("name", "keys", "pos", "has_gauss", "cached_gaussian")
# Before plain arrays: NumPy's state pickled into a uint8 entry "numpy"
# (Python's as JSON bytes in "python"). Never unpickled: refused.
_LEGACY_KEYS = ("numpy", "python")


def save_random_state(path: str, model) -> None:
    """Writes NumPy's, Python's and the model's SeedGenerator states to `path` (.npz of plain arrays)."""
    arrays = {f"seed:{name}": np.asarray(keras.ops.convert_to_numpy(g.state.value))
              for name, g in seed_generators(model).items()}
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    arrays.update({"numpy:name": np.array(name), "numpy:keys": np.asarray(keys, np.uint32),
                   "numpy:pos": np.int64(pos), "numpy:has_gauss": np.int64(has_gauss),
                   "numpy:cached_gaussian": np.float64(cached_gaussian)})
    version, state, gauss = random.getstate()
    arrays.update({"python:version": np.int64(version), "python:state": np.asarray(state, np.int64),
                   "python:has_gauss": np.bool_(gauss is not None),
                   "python:gauss": np.float64(0.0 if gauss is None else gauss)})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def read_random_state(path: str) -> dict[str, np.ndarray]:
    """The arrays of a random.npz, read without unpickling anything.

    Raises:
        UnsafeFileError: the file is in the old pickled format, or an entry is a pickle.
        ValueError: the file does not load, or a part is missing or malformed.
    """
    data = read_npz(path, what="random state")
    legacy = [key for key in _LEGACY_KEYS if key in data]
    if legacy:
        raise UnsafeFileError(
            f"random state {path!r} was written by an earlier tfdnc, which pickled NumPy's generator into its "
            f"entry {legacy[0]!r}; tfdnc never unpickles a file it is handed (a pickle can run code), so this "
            "run directory cannot be resumed: start the run afresh in a new --run-dir")
    missing = [f"numpy:{part}" for part in _NUMPY_PARTS if f"numpy:{part}" not in data]
    missing += [key for key in ("python:version", "python:state", "python:has_gauss", "python:gauss")
                if key not in data]
    if missing:
        raise ValueError(f"random state {path!r} lacks {', '.join(missing)}")
    return data


def check_random_state(path: str) -> None:
    """Raises `UnsafeFileError` if the random.npz at `path` could only be read by unpickling it.

    Called on resume before anything in the run directory changes; a file
    that is merely damaged passes here (restoring it then fails, by name).
    """
    try:
        read_random_state(path)
    except (OSError, ValueError):
        return


def restore_random_state(path: str, model) -> list[str]:
    """Restores what `save_random_state` wrote; returns the generators restored (unknown names are skipped)."""
    data = read_random_state(path)
    try:
        numpy_state = (str(data["numpy:name"]), data["numpy:keys"].astype(np.uint32, casting="same_kind"),
                       int(data["numpy:pos"]), int(data["numpy:has_gauss"]), float(data["numpy:cached_gaussian"]))
        python_state = (int(data["python:version"]), tuple(int(v) for v in data["python:state"]),
                        float(data["python:gauss"]) if bool(data["python:has_gauss"]) else None)
        if numpy_state[1].shape != (624,) or len(python_state[1]) != 625:
            raise ValueError(f"{numpy_state[1].shape[0]} NumPy keys (624 expected), "
                             f"{len(python_state[1])} Python words (625 expected)")
        np.random.RandomState().set_state(numpy_state)  # validated on scratch generators first
        random.Random().setstate(python_state)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"random state {path!r} is malformed: {exc}") from exc
    if "seed:global" in data:
        _global_generator(create=True)  # created lazily; the uninterrupted run had one by now
    generators = seed_generators(model)
    restored = []
    for key, value in data.items():
        if key.startswith("seed:") and key[5:] in generators:
            generators[key[5:]].state.assign(value)
            restored.append(key[5:])
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    return restored
