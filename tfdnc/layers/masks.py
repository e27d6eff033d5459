"""The subspace masks that split one embedding among K learners."""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from tfdnc.utils.arrays import l2_normalize_tensor

MASK_MODES = ("learnable", "fixed")
# A mask entry is "switched off" below this fraction of its mask's largest entry (statistics()).
OFF_BELOW = 0.1


@keras.saving.register_keras_serializable(package="tfdnc")
class SubspaceMasks(keras.layers.Layer):
    """K masks over a d-dimensional embedding, one per Divide & Conquer learner.

    Learner k sees `normalize(z * m_k)`, where m_k is

    - "fixed" (CVPR 2019): the indicator of the k-th of K contiguous blocks of
      d/K dimensions, so learner k's normalised embedding is its block;
    - "learnable" (TPAMI 2021): relu of a trainable vector, initialised to
      ones, kept apart from the others by `orthogonality_loss`.

    The layer holds `k_max` masks; only the first `num_active` (the current K)
    are used. `grow()` doubles K: child masks 2c and 2c+1 start as copies of
    parent c, matching how the clusters are split.

    Args:
        embedding_dim: d.
        k_max: most learners the run will have (the final K).
        mode: "learnable" or "fixed".
        initial_k: K at the start (1 when K grows; the final K when fixed).

    Examples:
        >>> masks = SubspaceMasks(embedding_dim=8, k_max=4, mode="fixed", initial_k=2)
        >>> z = np.random.randn(3, 8).astype("float32")
        >>> learner1 = masks(z, cluster=1)  # normalised dims 4..7, zeros elsewhere
        >>> every_learner = masks(z)  # (3, 4, 8)
    """

    def __init__(
        self,
        embedding_dim: int,
        k_max: int,
        mode: str = "learnable",
        initial_k: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in MASK_MODES:
            raise ValueError(f"SubspaceMasks: `mode` must be one of {MASK_MODES}, got {mode!r}")
        if embedding_dim < 1 or k_max < 1:
            raise ValueError(
                f"SubspaceMasks: `embedding_dim` ({embedding_dim}) and `k_max` ({k_max}) must be >= 1"
            )
        if not 1 <= initial_k <= k_max:
            raise ValueError(f"SubspaceMasks: `initial_k` ({initial_k}) must be in [1, k_max={k_max}]")
        if mode == "fixed":
            _check_divisible(embedding_dim, initial_k)
        self.embedding_dim = int(embedding_dim)
        self.k_max = int(k_max)
        self.mode = mode
        self.initial_k = int(initial_k)
        self.masks = self.add_weight(
            shape=(self.k_max, self.embedding_dim),
            initializer="ones",
            trainable=mode == "learnable",
            name="masks",
        )
        self.num_active_var = self.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(self.initial_k),
            trainable=False,
            name="num_active",
        )
        if mode == "fixed":
            self.masks.assign(block_masks(self.embedding_dim, self.initial_k, self.k_max))
        self.built = True

    # --- forward ------------------------------------------------------------
    def mask_tensor(self):
        """The effective masks, (k_max, d): relu(m) or the block indicators."""
        return ops.relu(self.masks) if self.mode == "learnable" else ops.convert_to_tensor(self.masks)

    def call(self, inputs, cluster=None, normalize: bool = True):
        """Learner `cluster`'s masked (by default L2-normalised) embedding of `inputs`.

        With `cluster=None`, every learner's: shape (batch, k_max, d).
        """
        if cluster is None:
            return self.all_learners(inputs, normalize=normalize)
        mask = ops.take(self.mask_tensor(), ops.cast(cluster, "int32"), axis=0)
        masked = inputs * ops.cast(mask, inputs.dtype)
        return l2_normalize_tensor(masked) if normalize else masked

    def all_learners(self, inputs, normalize: bool = True):
        """Every learner's embedding at once: (batch, k_max, d)."""
        masks = ops.cast(self.mask_tensor(), inputs.dtype)
        masked = inputs[:, None, :] * masks[None, :, :]
        return l2_normalize_tensor(masked) if normalize else masked

    def full_embedding(self, inputs):
        """The full (evaluation) embedding of `inputs`, unit norm.

        Learnable masks: normalize(z), as the TPAMI code evaluates. Fixed
        blocks: the concatenation of the separately normalised blocks of the
        current K (CompVis/metric-learning-divide-and-conquer:
        lib/model.py:121-134), divided by sqrt(K) so the vector keeps unit
        norm; the division changes no distance ranking.
        """
        if self.mode == "learnable":
            return l2_normalize_tensor(inputs)
        blocks = ops.sum(self.all_learners(inputs, normalize=True), axis=1)
        k = ops.cast(self.num_active_var, blocks.dtype)
        return blocks / ops.sqrt(k)

    def orthogonality_loss(self):
        """Mean cosine similarity of relu(m_i), relu(m_j) over active i != j.

        L_mask of the TPAMI paper without its weight lambda: 1/(K(K-1)) times
        the sum over ordered pairs. Zero for K = 1 and for fixed masks
        (disjoint blocks are orthogonal by construction).
        """
        if self.mode == "fixed":
            return ops.zeros((), dtype=self.compute_dtype)
        masks = l2_normalize_tensor(ops.cast(self.mask_tensor(), "float32"))
        cosine = ops.matmul(masks, ops.transpose(masks))
        k = self.num_active_var
        active = ops.cast(ops.arange(self.k_max) < k, "float32")
        pair = active[:, None] * active[None, :] * (1.0 - ops.eye(self.k_max))
        kf = ops.cast(k, "float32")
        return ops.sum(cosine * pair) / ops.maximum(kf * (kf - 1.0), 1.0)

    # --- schedule (eager; called between epochs) ------------------------------
    @property
    def num_active(self) -> int:
        return int(keras.ops.convert_to_numpy(self.num_active_var))

    def mask_values(self) -> np.ndarray:
        """The active effective masks as a NumPy array (K, d)."""
        return keras.ops.convert_to_numpy(self.mask_tensor())[: self.num_active]

    def statistics(self, off_below: float = OFF_BELOW) -> dict:
        """How far the active masks divide the embedding: {"mask_cosine", "mask_off_share"}.

        - mask_cosine: mean cosine of the effective masks over pairs i < j of
          the active K (1.0 when K = 1: one learner sees everything; 0 for
          fixed blocks, which are disjoint).
        - mask_off_share: the share of (learner, dimension) entries switched
          off, i.e. below `off_below` times the largest entry of their mask
          (0 at the start, when every mask is all ones; 1 - 1/K for fixed blocks).

        Examples:
            >>> SubspaceMasks(8, 4, mode="fixed", initial_k=4).statistics()
            {'mask_cosine': 0.0, 'mask_off_share': 0.75}
        """
        values = self.mask_values().astype(np.float64)
        k = len(values)
        peak = values.max(axis=1, keepdims=True)
        off = float(np.mean(values < off_below * peak))
        if k < 2:
            return {"mask_cosine": 1.0, "mask_off_share": off}
        norms = np.linalg.norm(values, axis=1, keepdims=True)
        unit = values / np.maximum(norms, 1e-12)
        cosine = unit @ unit.T
        pairs = cosine[np.triu_indices(k, 1)]
        return {"mask_cosine": float(pairs.mean()), "mask_off_share": off}

    def grow(self) -> int:
        """Doubles K; children 2c and 2c+1 copy parent c. Returns the new K."""
        k = self.num_active
        if 2 * k > self.k_max:
            raise ValueError(f"SubspaceMasks: cannot grow K={k} beyond k_max={self.k_max}")
        if self.mode == "fixed":
            _check_divisible(self.embedding_dim, 2 * k)
            values = block_masks(self.embedding_dim, 2 * k, self.k_max)
        else:
            values = keras.ops.convert_to_numpy(self.masks).copy()
            parents = values[:k].copy()
            values[: 2 * k] = np.repeat(parents, 2, axis=0)
        self.masks.assign(values)
        self.num_active_var.assign(2 * k)
        return 2 * k

    def set_num_active(self, k: int) -> None:
        """Sets K directly (fixed-K runs); learnable masks keep their values."""
        if not 1 <= k <= self.k_max:
            raise ValueError(f"SubspaceMasks: K={k} must be in [1, k_max={self.k_max}]")
        if self.mode == "fixed":
            _check_divisible(self.embedding_dim, k)
            self.masks.assign(block_masks(self.embedding_dim, k, self.k_max))
        self.num_active_var.assign(k)

    def get_config(self):
        return {
            **super().get_config(),
            "embedding_dim": self.embedding_dim,
            "k_max": self.k_max,
            "mode": self.mode,
            "initial_k": self.initial_k,
        }


def block_masks(embedding_dim: int, k: int, k_max: int | None = None) -> np.ndarray:
    """Indicator masks of K contiguous blocks of d/K dims, padded to k_max rows."""
    _check_divisible(embedding_dim, k)
    rows = max(k, k_max or k)
    masks = np.zeros((rows, embedding_dim), dtype=np.float32)
    size = embedding_dim // k
    for i in range(k):
        masks[i, i * size : (i + 1) * size] = 1.0
    return masks


def _check_divisible(embedding_dim: int, k: int) -> None:
    if embedding_dim % k:
        raise ValueError(
            f"fixed masks need the embedding dim ({embedding_dim}) to be divisible by K ({k})"
        )
