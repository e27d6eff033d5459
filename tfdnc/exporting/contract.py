"""The serving contract: signature and tensor names of a tfdnc export.

These names are the stable interface between an exported SavedModel and its
clients (TF Serving requests, `tfdnc.serving`, the CLI). This module imports
no TensorFlow, so clients can use it without loading TF.

Each signature is declared once, with its inputs, outputs, body, warm-up
request, metadata and client call, in `tfdnc.exporting.endpoints` (the
table of all five is there); this module holds only the names they share
with the clients and the files written beside the SavedModel.
"""

from __future__ import annotations

SERVING_DEFAULT = "serving_default"
EMBED_PIXELS = "embed_pixels"
EMBED_LEARNERS = "embed_learners"
SEARCH = "search"
SEARCH_K = "search_k"
# The built-in signatures, in the order an export adds them
# (`tfdnc.exporting.endpoints.REGISTRY` holds their declarations).
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
