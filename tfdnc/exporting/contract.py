"""The serving contract: signature and tensor names of a tfdnc export.

These names are the stable interface between an exported SavedModel and its
clients (TF Serving requests, `tfdnc.serving`, the CLI). This module imports
no TensorFlow, so clients can use it without loading TF.

Signatures (batch size B is always dynamic; H, W, C the model's input size,
d the embedding size, K the number of active learners, k the export's top-k,
m the largest `k` asked for in the batch):

=================  ============================  ==========================================
signature          inputs                        outputs
=================  ============================  ==========================================
serving_default    image_bytes: string (B,)      embeddings: float32 (B, d)
embed_pixels       pixels: float32 (B, H, W, C)  embeddings: float32 (B, d)
embed_learners     image_bytes: string (B,)      learner_embeddings: float32 (B, K, d)
search             image_bytes: string (B,)      ids: string|int64 (B, k),
                                                 similarities: float32 (B, k),
                                                 indices: int32 (B, k)
search_k           image_bytes: string (B,),     ids, similarities, indices: (B, m)
                   k: int32 (B,)
=================  ============================  ==========================================

`search_k` is `search` with a per-request k: one value per query image, each
in 1..max_k (fixed at export; larger values fail the request with
INVALID_ARGUMENT, they are not clipped). Every row gets the top m hits, m the
largest k of the batch, best first, so a row's own top k are its first k
columns; the clients cut each request back to its k. It is a signature of
its own, not an optional input of `search`, because TF Serving's server-side
batching needs every input to carry the batch dimension: an optional `k`
with a fixed default could not be batched with B > 1 images, and old
clients of `search` keep working unchanged.
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"
EMBED_PIXELS = "embed_pixels"
EMBED_LEARNERS = "embed_learners"
SEARCH = "search"
SEARCH_K = "search_k"
SIGNATURES = (SERVING_DEFAULT, EMBED_PIXELS, EMBED_LEARNERS, SEARCH, SEARCH_K)

# Input tensors. The `_bytes` suffix tells TF Serving-style REST front ends
# (and people) that the value is binary and travels as {"b64": ...}.
IMAGE_BYTES = "image_bytes"
PIXELS = "pixels"
K = "k"

# Output tensors.
EMBEDDINGS = "embeddings"
LEARNER_EMBEDDINGS = "learner_embeddings"
IDS = "ids"
SIMILARITIES = "similarities"
INDICES = "indices"

# Image formats the serving graph decodes (what tf.io.decode_image sniffs).
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")

# Files written beside the SavedModel, in TF Serving's assets.extra folder.
ASSETS_EXTRA = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "tfdnc_export.json"
