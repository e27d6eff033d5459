"""Your own export signature: `compare`, the cosine similarity of two images, beside tfdnc's own."""
import keras
import numpy as np
import tensorflow as tf

import tfdnc
from tfdnc.exporting.signatures import ServingGraphs, encode_png

model = tfdnc.DivideAndConquerModel(tfdnc.build_backbone("small_cnn", (32, 32, 3)), embedding_dim=16, k_final=2)
model(np.zeros((1, 32, 32, 3), np.float32))  # built (a trained model: tfdnc.load_model("runs/x/model.keras"))

# ServingGraphs holds what every tfdnc signature does to a request: decode and check the
# encoded images (one clear error naming the bad one), resize and crop as evaluation does,
# embed. A new signature reuses those steps and adds its own outputs.
graphs = ServingGraphs(model, image_size=32, channels=3)


def compare(left, right):
    """left, right: (B,) encoded images -> (B,) cosine similarity of each pair."""
    a = graphs.embed(graphs.decode(left, "compare"))
    b = graphs.embed(graphs.decode(right, "compare"))
    return {"similarity": tf.reduce_sum(a * b, axis=1)}


archive = keras.export.ExportArchive()
archive.track(model)
for name, (function, spec) in graphs.endpoints().items():  # serving_default, embed_pixels, embed_learners
    archive.add_endpoint(name, function, input_signature=spec)
pair = [tf.TensorSpec([None], tf.string, name="left"), tf.TensorSpec([None], tf.string, name="right")]
archive.add_endpoint("compare", compare, input_signature=pair)
archive.write_out("exports/pairs/1", verbose=False)  # a version folder TF Serving can load

# Call it as TF Serving would (REST: {"signature_name": "compare", "inputs": {"left": [...], ...}}).
served = tf.saved_model.load("exports/pairs/1")
rng = np.random.default_rng(0)
images = [encode_png(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
similarity = served.signatures["compare"](left=tf.constant(images), right=tf.constant(images[::-1]))["similarity"]
print(sorted(served.signatures), "| pairs:", similarity.shape[0], "| an image with itself:", round(float(similarity[1]), 3))
