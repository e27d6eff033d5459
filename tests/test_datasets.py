"""Loaders read each benchmark's on-disk layout, written here in miniature."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from tfdnc.datasets import DATASETS, DatasetError, load_dataset
from tfdnc.datasets.base import ImageSet
from tfdnc.datasets.vehicleid import query_gallery_split


def write_image(path, fmt="PNG", size=(6, 5), value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value % 256, dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def replace_line(path, number, text):
    with open(path) as f:
        lines = f.read().splitlines()
    lines[number - 1] = text
    write_lines(path, lines)


# --- CUB-200-2011 -----------------------------------------------------------

def make_cub(root, classes, per_class=2, boxes=True):
    """CUB_200_2011/ with images.txt, image_class_labels.txt, bounding_boxes.txt."""
    root = os.path.join(root, "CUB_200_2011")
    images, labels, box_lines, expected_boxes = [], [], [], {}
    image_id = 0
    for c in classes:
        for j in range(per_class):
            image_id += 1
            name = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            write_image(os.path.join(root, "images", name), "JPEG", value=image_id)
            images.append(f"{image_id} {name}")
            labels.append(f"{image_id} {c}")
            box = (float(image_id), 2.0, 3.5, 4.0)
            expected_boxes[name] = box
            box_lines.append(f"{image_id} " + " ".join(str(v) for v in box))
    write_lines(os.path.join(root, "images.txt"), images)
    write_lines(os.path.join(root, "image_class_labels.txt"), labels)
    if boxes:
        write_lines(os.path.join(root, "bounding_boxes.txt"), box_lines)
    return root, expected_boxes


def test_cub_split_labels_and_boxes(tmp_path):
    rng = np.random.default_rng(0)
    classes = sorted(rng.choice(np.arange(1, 201), size=8, replace=False).tolist())
    classes = sorted(set(classes) | {100, 101})  # both sides of the boundary
    root, boxes = make_cub(tmp_path, classes, per_class=3)
    assert load_dataset("cub", str(tmp_path)).train.boxes is None  # boxes only on request
    splits = load_dataset("cub", str(tmp_path), use_boxes=True)  # the parent folder works too
    assert splits.protocol == "cub"
    train_classes = [c for c in classes if c <= 100]
    test_classes = [c for c in classes if c > 100]
    assert sorted(np.unique(splits.train.labels)) == train_classes
    assert sorted(np.unique(splits.test.labels)) == test_classes
    assert len(splits.train) == 3 * len(train_classes)
    assert len(splits.test) == 3 * len(test_classes)
    for image_set in (splits.train, splits.test):
        for path, label, box in zip(image_set.paths, image_set.labels, image_set.boxes):
            assert os.path.isfile(path)
            rel = os.path.relpath(path, os.path.join(root, "images"))
            assert rel.startswith(f"{label:03d}.")
            np.testing.assert_allclose(box, boxes[rel])


def test_cub_without_boxes_file(tmp_path):
    make_cub(tmp_path, [1, 150], boxes=False)
    splits = load_dataset("cub", str(tmp_path / "CUB_200_2011"))
    assert splits.train.boxes is None and splits.test.boxes is None
    with pytest.raises(DatasetError, match=r"bounding_boxes\.txt: CUB box list not found"):
        load_dataset("cub", str(tmp_path), use_boxes=True)
    with pytest.raises(ValueError, match="--use-boxes: the 'digits' data set has no bounding boxes"):
        load_dataset("digits", use_boxes=True)


def test_cub_bad_input(tmp_path):
    root, _ = make_cub(tmp_path, [1, 2, 150, 151])
    images_txt = os.path.join(root, "images.txt")
    # an image listed but absent: names the list file and line
    os.remove(os.path.join(root, "images", "150.Bird_150/Bird_150_1.jpg"))
    with pytest.raises(DatasetError, match=r"images\.txt:6: image listed but absent"):
        load_dataset("cub", root)
    assert load_dataset("cub", root, check_files=False).test is not None
    # a malformed line
    replace_line(images_txt, 3, "3")
    with pytest.raises(DatasetError, match=r"images\.txt:3: malformed line"):
        load_dataset("cub", root, check_files=False)
    replace_line(images_txt, 3, "three 002.Bird_2/Bird_2_0.jpg")
    with pytest.raises(DatasetError, match=r"images\.txt:3: image_id must be an integer"):
        load_dataset("cub", root, check_files=False)
    # a missing list file
    replace_line(images_txt, 3, "3 002.Bird_2/Bird_2_0.jpg")
    os.remove(os.path.join(root, "image_class_labels.txt"))
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt: CUB class label list not found"):
        load_dataset("cub", root, check_files=False)


def test_cub_split_with_no_classes(tmp_path):
    root, _ = make_cub(tmp_path, [1, 2, 3])
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt: the test split has no classes"):
        load_dataset("cub", root)
    with pytest.raises(DatasetError, match="needs a data directory"):
        load_dataset("cub")
    with pytest.raises(DatasetError, match="images.txt not found"):
        load_dataset("cub", str(tmp_path / "CUB_200_2011" / "images"))


# --- CARS196 ------------------------------------------------------------------

_BOX = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def struct_array(records, fields):
    array = np.zeros((len(records),), dtype=[(f, "O") for f in fields])
    for i, record in enumerate(records):
        array[i] = tuple(record[f] for f in fields)
    return array[None, :]  # MATLAB's 1 x N


def make_cars_all_in_one(root, classes, per_class=2):
    records, expected = [], {}
    n = 0
    for c in classes:
        for _ in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(os.path.join(root, rel), "JPEG", value=n)
            x1, y1 = n, 2 * n
            record = {"relative_im_path": rel, "bbox_x1": np.uint16(x1), "bbox_y1": np.uint16(y1),
                      "bbox_x2": np.uint16(x1 + 9), "bbox_y2": np.uint16(y1 + 4),
                      "class": np.uint8(c), "test": np.uint8(n % 2)}
            records.append(record)
            expected[os.path.join(root, rel)] = (c, (x1 - 1, y1 - 1, 10, 5))
    fields = ["relative_im_path", *_BOX, "class", "test"]
    names = np.array([f"Car {i}" for i in range(1, 197)], dtype=object)[None, :]
    savemat(os.path.join(root, "cars_annos.mat"),
            {"annotations": struct_array(records, fields), "class_names": names})
    return expected


def test_cars_all_in_one_layout(tmp_path):
    classes = [1, 5, 98, 99, 150, 196]
    expected = make_cars_all_in_one(str(tmp_path), classes, per_class=3)
    assert load_dataset("cars", str(tmp_path)).test.boxes is None
    splits = load_dataset("cars", str(tmp_path), use_boxes=True)
    assert splits.protocol == "cars"
    assert sorted(np.unique(splits.train.labels)) == [1, 5, 98]
    assert sorted(np.unique(splits.test.labels)) == [99, 150, 196]
    assert len(splits.train) == len(splits.test) == 9
    for image_set in (splits.train, splits.test):
        for path, label, box in zip(image_set.paths, image_set.labels, image_set.boxes):
            assert expected[path][0] == label
            np.testing.assert_allclose(box, expected[path][1])


def test_cars_devkit_layout(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "devkit"))
    fields = ["fname", *_BOX, "class"]
    per_split = {"train": [(1, 3), (2, 120)], "test": [(1, 98), (2, 99), (3, 99)]}
    for split, items in per_split.items():
        records = []
        for i, c in items:
            fname = f"{i:05d}.jpg"
            write_image(os.path.join(root, f"cars_{split}", fname), "JPEG")
            records.append({"fname": fname, "bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 4, "bbox_y2": 3,
                            "class": c})
        name = "cars_train_annos.mat" if split == "train" else "cars_test_annos.mat"
        use = fields if split == "train" else fields[:-1]  # the devkit's test file is unlabelled
        savemat(os.path.join(root, "devkit", name), {"annotations": struct_array(records, use)})
        if split == "test":
            labelled = os.path.join(root, "devkit", "cars_test_annos_withlabels_pending.mat")
            savemat(labelled, {"annotations": struct_array(records, fields)})
    with pytest.raises(DatasetError, match="cars_test_annos_withlabels.mat"):
        load_dataset("cars", root)
    os.rename(os.path.join(root, "devkit", "cars_test_annos_withlabels_pending.mat"),
              os.path.join(root, "devkit", "cars_test_annos_withlabels.mat"))
    splits = load_dataset("cars", root, use_boxes=True)
    assert sorted(splits.train.labels.tolist()) == [3, 98]
    assert sorted(splits.test.labels.tolist()) == [99, 99, 120]
    assert all(os.path.isfile(p) for p in splits.train.paths + splits.test.paths)
    np.testing.assert_allclose(splits.train.boxes, [[0, 0, 4, 3]] * 2)


def test_cars_bad_input(tmp_path):
    make_cars_all_in_one(str(tmp_path), [1, 99])
    os.remove(str(tmp_path / "car_ims" / "000003.jpg"))
    with pytest.raises(DatasetError, match=r"cars_annos\.mat \(annotation 3\): image listed but absent"):
        load_dataset("cars", str(tmp_path))
    make_cars_all_in_one(str(tmp_path), [1, 2])
    with pytest.raises(DatasetError, match=r"cars_annos\.mat.*the test split has no classes"):
        load_dataset("cars", str(tmp_path))
    savemat(str(tmp_path / "cars_annos.mat"),
            {"annotations": struct_array([{"relative_im_path": "x.jpg", "class": 1}],
                                         ["relative_im_path", "class"])})
    with pytest.raises(DatasetError, match=r"annotation 1\): annotation lacks field"):
        load_dataset("cars", str(tmp_path))
    with pytest.raises(DatasetError, match="neither cars_annos.mat nor devkit"):
        load_dataset("cars", str(tmp_path / "car_ims"))


# --- Stanford Online Products -------------------------------------------------

def make_sop(root, train, test):
    """train / test: lists of (class_id, super_class_id, images per class)."""
    root = os.path.join(root, "Stanford_Online_Products")
    image_id = 0
    for split, spec in (("train", train), ("test", test)):
        lines = ["image_id class_id super_class_id path"]
        for class_id, super_id, count in spec:
            for j in range(count):
                image_id += 1
                rel = f"super{super_id}_final/{class_id}_{j}.JPG"
                write_image(os.path.join(root, rel), "JPEG")
                lines.append(f"{image_id} {class_id} {super_id} {rel}")
        write_lines(os.path.join(root, f"Ebay_{split}.txt"), lines)
    return root


def test_sop_lists_and_super_labels(tmp_path):
    train = [(1, 1, 2), (2, 1, 3), (3, 2, 2)]
    test = [(4, 2, 2), (5, 3, 4)]
    make_sop(str(tmp_path), train, test)
    splits = load_dataset("sop", str(tmp_path))
    assert splits.protocol == "sop"
    for image_set, spec in ((splits.train, train), (splits.test, test)):
        assert len(image_set) == sum(n for _, _, n in spec)
        assert image_set.num_classes == len(spec)
        super_of = {c: s for c, s, _ in spec}
        assert [super_of[c] for c in image_set.labels] == image_set.extra["super_labels"].tolist()
        for path, label in zip(image_set.paths, image_set.labels):
            assert os.path.basename(path).startswith(f"{label}_")


def test_sop_bad_input(tmp_path):
    root = make_sop(str(tmp_path), [(1, 1, 2)], [(2, 1, 2)])
    replace_line(os.path.join(root, "Ebay_test.txt"), 1, "id class super path")
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt:1: expected the header"):
        load_dataset("sop", root)
    replace_line(os.path.join(root, "Ebay_test.txt"), 1, "image_id class_id super_class_id path")
    replace_line(os.path.join(root, "Ebay_test.txt"), 3, "4 2 1")
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt:3: malformed line: expected 4 fields"):
        load_dataset("sop", root)
    write_lines(os.path.join(root, "Ebay_test.txt"), ["image_id class_id super_class_id path"])
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt: SOP test list lists no images"):
        load_dataset("sop", root)
    os.remove(os.path.join(root, "Ebay_test.txt"))
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt: SOP test list not found"):
        load_dataset("sop", root)


# --- In-shop Clothes ----------------------------------------------------------

def make_inshop(root, items, count_line=None):
    """items: list of (item number, status, images)."""
    lines = []
    for item, status, count in items:
        for j in range(count):
            rel = f"img/MEN/Tees/id_{item:08d}/{j:02d}_1_front.jpg"
            write_image(os.path.join(root, "Img", rel), "JPEG")
            lines.append(f"{rel}  id_{item:08d}  {status}")
    header = [str(count_line if count_line is not None else len(lines)),
              "image_name item_id evaluation_status"]
    write_lines(os.path.join(root, "Eval", "list_eval_partition.txt"), header + lines)


def test_inshop_query_gallery(tmp_path):
    items = [(1, "train", 2), (2, "train", 3), (7, "query", 2), (7, "gallery", 1),
             (9, "query", 1), (9, "gallery", 2), (12, "gallery", 1)]
    make_inshop(str(tmp_path), items)
    splits = load_dataset("inshop", str(tmp_path))
    assert splits.protocol == "inshop" and splits.test is None
    for image_set, status in ((splits.train, "train"), (splits.query, "query"), (splits.gallery, "gallery")):
        expected = sorted(i for i, s, n in items if s == status for _ in range(n))
        assert sorted(image_set.labels.tolist()) == expected
        for path, label in zip(image_set.paths, image_set.labels):
            assert f"id_{label:08d}" in path and os.path.isfile(path)


def test_inshop_bad_input(tmp_path):
    make_inshop(str(tmp_path), [(1, "train", 2), (2, "gallery", 2)])
    with pytest.raises(DatasetError, match=r"list_eval_partition\.txt: the query split has no classes"):
        load_dataset("inshop", str(tmp_path))
    make_inshop(str(tmp_path), [(1, "train", 2), (2, "query", 1), (2, "gallery", 1)], count_line=9)
    with pytest.raises(DatasetError, match=r"list_eval_partition\.txt:1: the first line announces 9"):
        load_dataset("inshop", str(tmp_path))
    make_inshop(str(tmp_path), [(1, "train", 2), (2, "query", 1), (2, "validation", 1)])
    with pytest.raises(DatasetError, match=r"list_eval_partition\.txt:6: evaluation_status must be"):
        load_dataset("inshop", str(tmp_path))


# --- PKU VehicleID ------------------------------------------------------------

def make_vehicleid(root, train, tests):
    """train: {vehicle: images}; tests: {size: {vehicle: images}}."""
    root = os.path.join(root, "VehicleID_V1.0")
    counter = [0]

    def lines_for(spec):
        lines = []
        for vehicle, count in spec.items():
            for _ in range(count):
                counter[0] += 1
                name = f"{counter[0]:07d}"
                write_image(os.path.join(root, "image", f"{name}.jpg"), "JPEG", size=(3, 3))
                lines.append(f"{name} {vehicle}")
        return lines

    write_lines(os.path.join(root, "train_test_split", "train_list.txt"), lines_for(train))
    for size, spec in tests.items():
        write_lines(os.path.join(root, "train_test_split", f"test_list_{size}.txt"), lines_for(spec))
    return root


def test_vehicleid_query_gallery_per_size(tmp_path):
    rng = np.random.default_rng(1)
    tests = {size: {int(v): int(rng.integers(1, 5)) for v in rng.choice(1000, n, replace=False) + 2000}
             for size, n in ((800, 4), (1600, 6), (2400, 9))}
    root = make_vehicleid(str(tmp_path), {1: 2, 2: 3}, tests)
    splits = load_dataset("vehicleid", str(tmp_path), seed=3)
    assert splits.protocol == "vehicleid"
    assert sorted(splits.extra_tests) == ["1600", "2400", "800"]
    assert splits.query is splits.extra_tests["2400"][0]
    assert sorted(splits.train.labels.tolist()) == [1, 1, 2, 2, 2]
    for size, spec in tests.items():
        query, gallery = splits.extra_tests[str(size)]
        # one gallery image per vehicle, the rest are queries; nothing lost or shared
        assert sorted(gallery.labels.tolist()) == sorted(spec)
        assert sorted(query.labels.tolist()) == sorted(v for v, n in spec.items() for _ in range(n - 1))
        assert not set(query.paths) & set(gallery.paths)
        listed = open(os.path.join(root, "train_test_split", f"test_list_{size}.txt")).read().split()
        assert len(query) + len(gallery) == len(listed) // 2
    again = load_dataset("vehicleid", str(tmp_path), seed=3)
    assert again.gallery.paths == splits.gallery.paths


def test_query_gallery_split_is_seeded_and_random():
    labels = np.repeat(np.arange(30), 5)
    images = ImageSet(labels=labels, paths=[f"{i}.jpg" for i in range(len(labels))])
    galleries = [tuple(query_gallery_split(images, seed=s)[1].paths) for s in (0, 0, 1)]
    assert galleries[0] == galleries[1]
    assert galleries[0] != galleries[2]  # 5^-30 chance of a false failure
    # every image of a class has a chance to be its gallery image
    picks = {query_gallery_split(images, seed=s)[1].paths[0] for s in range(60)}
    assert picks == {f"{i}.jpg" for i in range(5)}


def test_vehicleid_bad_input(tmp_path):
    root = make_vehicleid(str(tmp_path), {1: 2}, {800: {5: 2}, 1600: {5: 2}})
    with pytest.raises(DatasetError, match=r"test_list_2400\.txt: VehicleID test_2400 list not found"):
        load_dataset("vehicleid", root)
    splits = load_dataset("vehicleid", root, test_sizes=(800, 1600), main_test=800)
    assert sorted(splits.extra_tests) == ["1600", "800"]
    replace_line(os.path.join(root, "train_test_split", "train_list.txt"), 2, "0000002 one")
    with pytest.raises(DatasetError, match=r"train_list\.txt:2: vehicle_id must be an integer"):
        load_dataset("vehicleid", root, test_sizes=(800,), main_test=800)


# --- image folders and CSV ----------------------------------------------------

def test_image_folder_class_split(tmp_path):
    counts = {"ant": 2, "bee": 3, "cat": 1, "dog": 2, "eel": 2}
    for name, n in counts.items():
        for j in range(n):
            write_image(str(tmp_path / name / f"{j}.png"))
    (tmp_path / "notes.txt").write_text("not a class")
    splits = load_dataset("folder", str(tmp_path), train_fraction=0.4)
    names = sorted(counts)
    assert sorted(set(splits.train.extra["class_names"])) == names[:2]
    assert sorted(set(splits.test.extra["class_names"])) == names[2:]
    assert len(splits.train) == 5 and len(splits.test) == 5
    # labels are the index of the class name among all names
    for image_set in (splits.train, splits.test):
        assert [names[i] for i in image_set.labels] == image_set.extra["class_names"].tolist()


def test_image_folder_train_test_layout(tmp_path):
    for split, classes in (("train", ["a", "b"]), ("test", ["c", "d", "e"])):
        for c in classes:
            write_image(str(tmp_path / split / c / "x.jpg"), "JPEG")
            write_image(str(tmp_path / split / c / "y.png"))
    splits = load_dataset("folder", str(tmp_path))
    assert set(splits.train.extra["class_names"]) == {"a", "b"}
    assert set(splits.test.extra["class_names"]) == {"c", "d", "e"}
    assert len(splits.test) == 6
    os.makedirs(tmp_path / "test" / "f")
    with pytest.raises(DatasetError, match=r"test/f: class folder holds no images"):
        load_dataset("folder", str(tmp_path))


def test_image_folder_bad_input(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"train: the split has no classes"):
        load_dataset("folder", str(tmp_path))
    with pytest.raises(DatasetError, match="data directory not found"):
        load_dataset("folder", str(tmp_path / "nowhere"))


def test_csv_with_query_gallery_and_names(tmp_path):
    rows = [("a/1.png", "owl", "train"), ("a/2.png", "owl", "train"), ("b/1.png", "emu", "train"),
            ("b/2.png", "emu", "train"), ("c/1.png", "yak", "query"), ("c/2.png", "yak", "gallery"),
            ("d/1.png", "asp", "gallery")]
    for path, *_ in rows:
        write_image(str(tmp_path / path))
    write_lines(str(tmp_path / "list.csv"), ["path,label,split"] + [",".join(r) for r in rows])
    splits = load_dataset("csv", str(tmp_path))  # the folder with one .csv
    names = sorted({r[1] for r in rows})
    assert splits.test is None
    assert [names[i] for i in splits.query.labels] == ["yak"]
    assert sorted(names[i] for i in splits.gallery.labels) == ["asp", "yak"]
    assert splits.train.extra["class_names"].tolist() == ["owl", "owl", "emu", "emu"]


def test_csv_integer_labels_class_split(tmp_path):
    labels = [3, 3, 10, 10, 7, 7, 1, 1]
    for i in range(len(labels)):
        write_image(str(tmp_path / "img" / f"{i}.png"))
    write_lines(str(tmp_path / "l.csv"), [f"img/{i}.png,{c}" for i, c in enumerate(labels)])
    splits = load_dataset("csv", str(tmp_path / "l.csv"))
    # sorted as strings ("1" < "10" < "3" < "7"): the first half trains
    assert sorted(set(splits.train.labels.tolist())) == [1, 10]
    assert sorted(set(splits.test.labels.tolist())) == [3, 7]
    assert "class_names" not in splits.train.extra


def test_csv_bad_input(tmp_path):
    write_image(str(tmp_path / "x.png"))
    csv_path = str(tmp_path / "l.csv")
    write_lines(csv_path, ["x.png,1,train", "x.png,2,test", "x.png"])
    with pytest.raises(DatasetError, match=r"l\.csv:3: malformed line"):
        load_dataset("csv", csv_path)
    write_lines(csv_path, ["x.png,1,train", "y.png,2,test"])
    with pytest.raises(DatasetError, match=r"l\.csv:2: image listed but absent"):
        load_dataset("csv", csv_path)
    write_lines(csv_path, ["x.png,1,train", "x.png,2,validate"])
    with pytest.raises(DatasetError, match=r"l\.csv:2: split must be one of"):
        load_dataset("csv", csv_path)
    write_lines(csv_path, ["x.png,1,test", "x.png,2,test"])
    with pytest.raises(DatasetError, match=r"l\.csv: the train split has no classes"):
        load_dataset("csv", csv_path)
    write_lines(csv_path, ["x.png,1,train", "x.png,2,query"])
    with pytest.raises(DatasetError, match=r"the gallery split has no classes"):
        load_dataset("csv", csv_path)


def test_registry_names_every_loader():
    assert {"mnist", "digits", "cub", "cars", "sop", "inshop", "vehicleid", "folder", "csv"} <= set(DATASETS)
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'"):
        load_dataset("imagenet")


# --- symbolic links: each real file once ---------------------------------------


def write_classes(root, counts):
    for name, n in counts.items():
        for j in range(n):
            write_image(str(root / name / f"{j}.png"), value=j)


def test_a_class_folder_linking_to_the_data_folder_adds_nothing(tmp_path):
    """`ln -s . DATA/zzloop` once made 25 classes of 2 x the images; now it is left out and named."""
    counts = {f"c{i:02d}": 3 for i in range(6)}
    write_classes(tmp_path, counts)
    before = load_dataset("folder", str(tmp_path))
    os.symlink(".", tmp_path / "zzloop")
    os.symlink("..", tmp_path / "c00" / "up")  # a loop inside a class folder: never entered
    splits = load_dataset("folder", str(tmp_path))
    assert splits.train.paths == before.train.paths and splits.test.paths == before.test.paths
    assert len(splits.train) + len(splits.test) == 18
    assert sorted(set(splits.train.extra["class_names"]) | set(splits.test.extra["class_names"])) == sorted(counts)
    left = {x.path: x for x in splits.left_out}
    assert set(left) == {str(tmp_path / "zzloop"), str(tmp_path / "c00" / "up")}
    assert "the data folder itself or a folder above it" in left[str(tmp_path / "zzloop")].reason
    assert "symbolic link to a folder" in left[str(tmp_path / "c00" / "up")].reason


def test_a_file_reached_twice_through_links_is_kept_once_and_named(tmp_path):
    write_classes(tmp_path / "train", {"ant": 2, "bee": 2})
    write_classes(tmp_path / "test", {"cat": 2, "dog": 2})
    os.symlink(tmp_path / "train" / "ant", tmp_path / "test" / "ant copy")  # a whole class again, in test
    os.symlink("0.png", tmp_path / "test" / "cat" / "again.png")  # a link beside its target
    os.symlink(tmp_path / "train" / "bee" / "1.png", tmp_path / "test" / "dog" / "bee.png")  # a train image in test
    os.symlink("missing.png", tmp_path / "test" / "dog" / "dangling.png")  # listed: the image check names it
    splits = load_dataset("folder", str(tmp_path))
    assert len(splits.train) == 4
    assert sorted(splits.test.paths) == sorted(str(tmp_path / "test" / c / f) for c, f in
                                               [("cat", "0.png"), ("cat", "1.png"), ("dog", "0.png"),
                                                ("dog", "1.png"), ("dog", "dangling.png")])
    assert set(splits.test.extra["class_names"]) == {"cat", "dog"}
    left = {x.path: x for x in splits.left_out}
    assert left[str(tmp_path / "test" / "cat" / "again.png")].reason.startswith(
        f"the same file as {tmp_path / 'test' / 'cat' / '0.png'}")
    assert left[str(tmp_path / "test" / "dog" / "bee.png")].reason.startswith(
        f"the same file as {tmp_path / 'train' / 'bee' / '1.png'}")
    assert left[str(tmp_path / "test" / "ant copy")].class_name == "ant copy"
    assert "the class is left out" in left[str(tmp_path / "test" / "ant copy")].reason
    assert {x.split for x in splits.left_out} == {"test"}
    assert len(splits.left_out) == 2 + 2 + 1  # two copies of ant's images, the class, two single links
