"""Extend: your own export signature.

A signature is one class (`tfdnc.exporting.Signature`) that declares its
name, inputs, outputs and body; registered, every later export has it, with
its TF Serving warm-up request and its entry in the export metadata, and the
clients (`RestClient`, `GrpcClient`, `ExportedModel`) can `call` it.

This one, `class_votes`, answers a class per query image: the gallery's ids
are "CLASS/FILE" paths (a gallery folder of class folders), and the class
most of the query's top-k hits belong to wins (a tie goes to the class of
the nearer hit). It runs on TF Serving as it is: core TensorFlow ops only.

The script exports a small model with it, calls it in-process through
`ExportedModel.call`, then loads the export in a fresh process that has
TensorFlow and nothing of tfdnc (as TF Serving would) and calls it there:

    PYTHONPATH=. python docs/examples/own_signature.py --out /tmp/own_signature
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tfdnc.exporting import Signature, TensorInfo, export_model, register_signature

SIZE = 16  # image side the model sees


class ClassVotes(Signature):
    """Encoded images -> the majority class of each one's `k` nearest gallery images, and its votes."""

    name = "class_votes"
    inputs = (TensorInfo("image_bytes", "string", ("B",)),)
    outputs = (TensorInfo("labels", "string", ("B",)), TensorInfo("votes", "int32", ("B",)))
    metadata_absent = {"class_votes_k": None}  # in tfdnc_export.json of an export without a gallery

    def __init__(self, k: int = 3):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"ClassVotes: `k` must be >= 1, got {k}")
        self.k = int(k)

    def available(self, graphs) -> bool:
        return graphs.gallery is not None  # only an export with a gallery has it

    def function(self, graphs):
        import tensorflow as tf

        k = min(self.k, graphs.gallery.size)

        def class_votes(image_bytes):
            queries = graphs.embed(graphs.decode(image_bytes, self.name))
            hits = graphs.gallery.top_hits(queries, k)  # ids, similarities, indices: (B, k), best first
            labels = tf.strings.regex_replace(hits["ids"], "/.*", "")  # "CLASS/FILE" -> "CLASS"
            same = tf.cast(tf.equal(labels[:, :, None], labels[:, None, :]), tf.int32)
            counts = tf.reduce_sum(same, axis=2)  # (B, k): the votes of each hit's class
            best = tf.argmax(counts, axis=1, output_type=tf.int32)  # the first (nearest) of the tied
            return {"labels": tf.gather(labels, best, batch_dims=1), "votes": tf.reduce_max(counts, axis=1)}

        return class_votes

    def metadata(self, graphs) -> dict:
        return {"class_votes_k": min(self.k, graphs.gallery.size)}

    def response(self, parts, where: str, **options) -> list[tuple[str, int]]:
        """The client's answer: one (class, votes) pair per image."""
        labels = np.concatenate([np.asarray(p["labels"]) for p in parts])
        votes = np.concatenate([np.asarray(p["votes"]) for p in parts])
        return [(label.decode() if isinstance(label, bytes) else str(label), int(v))
                for label, v in zip(labels, votes)]


# What a process with TensorFlow alone (no tfdnc) runs: TF Serving's view.
CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf

    export, queries_file = sys.argv[1:]
    queries = json.load(open(queries_file))
    fn = tf.saved_model.load(export).signatures["class_votes"]
    out = fn(image_bytes=tf.constant([bytes.fromhex(q) for q in queries]))
    print(json.dumps({
        "labels": [label.decode() for label in out["labels"].numpy()],
        "votes": out["votes"].numpy().tolist(),
        "tfdnc_loaded": any(m.split(".")[0] == "tfdnc" for m in sys.modules),
    }))
    """
)


def small_model():
    import keras

    from tfdnc.backbones import build_backbone
    from tfdnc.model import DivideAndConquerModel

    keras.utils.set_random_seed(0)
    return DivideAndConquerModel(build_backbone("small_cnn", (SIZE, SIZE, 3), width=4),
                                 embedding_dim=8, k_max=2, initial_k=2)


def write_gallery(folder: str, rng) -> list[bytes]:
    """Two classes of images in class folders (ids "bright/0.png", ...); returns 4 query images."""
    from tfdnc.exporting.signatures import encode_png

    def image(level):
        return encode_png(np.clip(rng.normal(level, 30, (SIZE + 4, SIZE + 2, 3)), 0, 255).astype(np.uint8))

    for label, level in (("bright", 200), ("dark", 50)):
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        for i in range(4):
            with open(os.path.join(folder, label, f"{i}.png"), "wb") as f:
                f.write(image(level))
    return [image(200), image(50), image(190), image(60)]


def majority_of_top_k(client, queries, k: int) -> list[tuple[str, int]]:
    """What `class_votes` must answer, from the built-in `search_k` signature and NumPy."""
    hits = client.search(queries, k=k)
    answers = []
    for row in hits.ids:
        labels = [hit.split("/")[0] for hit in row]
        counts = [labels.count(label) for label in labels]
        best = int(np.argmax(counts))
        answers.append((labels[best], counts[best]))
    return answers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the gallery and the export")
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    from tfdnc.serving import ExportedModel

    queries = write_gallery(os.path.join(args.out, "gallery"), np.random.default_rng(0))
    register_signature(ClassVotes(k=3))  # from here on, every export has `class_votes`
    path = export_model(small_model(), os.path.join(args.out, "exports"), "votes", image_size=SIZE,
                        gallery=os.path.join(args.out, "gallery"), top_k=5)

    client = ExportedModel(path)
    in_process = client.call("class_votes", queries, batch_size=2)
    expected = majority_of_top_k(client, queries, k=3)

    with open(os.path.join(args.out, "queries.json"), "w") as f:
        json.dump([q.hex() for q in queries], f)
    with open(os.path.join(args.out, "clean_process.py"), "w") as f:
        f.write(CLEAN_PROCESS)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run([sys.executable, "-I", os.path.join(args.out, "clean_process.py"), path,
                           os.path.join(args.out, "queries.json")],
                          capture_output=True, text=True, env=env, cwd=args.out, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the TensorFlow-only process failed:\n{done.stderr[-3000:]}")
    clean = json.loads(done.stdout.strip().splitlines()[-1])

    summary = {
        "export": path,
        "signatures": client.signature_names,
        "in_process": in_process,
        "tensorflow_only": list(zip(clean["labels"], clean["votes"])),
        "numpy_reference": expected,
        "tfdnc_loaded_in_clean_process": clean["tfdnc_loaded"],
        "metadata_class_votes_k": client.export_metadata["class_votes_k"],
    }
    print(json.dumps(summary, indent=2, default=list))
    return summary


if __name__ == "__main__":
    main()
