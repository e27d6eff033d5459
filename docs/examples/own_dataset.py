"""Your own data set loader: a JSON-lines list of images, registered under a name."""
import json
import os

import numpy as np
from PIL import Image

from tfdnc.datasets import DATASETS, DataSplits, DatasetError, ImageSet, load_dataset


def load_jsonl(data_dir: str, train_fraction: float = 0.5) -> DataSplits:
    """Reads DATA_DIR/images.jsonl, one {"path": ..., "label": ...} per line (paths relative to it).

    The classes are split disjointly, as in the papers' benchmarks: the first
    `train_fraction` of the sorted labels train, the rest are the test set.
    """
    listing = os.path.join(data_dir, "images.jsonl")
    if not os.path.isfile(listing):
        raise DatasetError("list file not found", listing)
    paths, labels = [], []
    with open(listing) as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
                paths.append(os.path.join(data_dir, record["path"]))
                labels.append(int(record["label"]))
            except (ValueError, KeyError, TypeError) as err:  # one clear line naming file and line
                raise DatasetError(f"expected {{\"path\": ..., \"label\": int}}: {err}", listing, number) from None
    paths, labels = np.array(paths), np.array(labels)
    classes = np.unique(labels)
    train_classes = classes[: int(round(len(classes) * train_fraction))]
    is_train = np.isin(labels, train_classes)
    return DataSplits(
        train=ImageSet(labels=labels[is_train], paths=list(paths[is_train]), name="jsonl/train"),
        test=ImageSet(labels=labels[~is_train], paths=list(paths[~is_train]), name="jsonl/test"),
        protocol="default",  # Recall@1,2,4,8 all-vs-all, NMI, F1, MAP@R
    )


DATASETS["jsonl"] = load_jsonl  # load_dataset("jsonl", DIR), as the built-in names

# Some images to read: 4 classes of 3 images each.
os.makedirs("catalogue", exist_ok=True)
with open("catalogue/images.jsonl", "w") as f:
    for label in range(4):
        for i in range(3):
            name = f"{label}_{i}.png"
            Image.fromarray(np.full((16, 16, 3), 60 * label, np.uint8)).save(os.path.join("catalogue", name))
            f.write(json.dumps({"path": name, "label": label}) + "\n")

splits = load_dataset("jsonl", "catalogue")
print(len(splits.train.paths), "train images of classes", sorted(set(splits.train.labels.tolist())),
      "|", len(splits.test.paths), "test images")

# A broken line is named with its file and line number:
with open("catalogue/images.jsonl", "a") as f:
    f.write('{"path": "x.png"}\n')
try:
    load_dataset("jsonl", "catalogue")
except DatasetError as err:
    print("refused:", err)
