"""Reading images and labels: folders, splits, CSV, unlabelled, Datasets (decoding: test_decode.py)."""
import pytest
import torch

from featcache import FeatcacheError
from featcache.sources import UNLABELLED, from_dataset, open_source


def test_class_folder_labels_from_folder_names_and_junk_ignored(class_folder):
    src = open_source(class_folder)
    assert src.class_names == ["bird", "cat", "dog"]
    assert len(src) == 12  # 4 per class; hidden files/folders, .txt and AppleDouble files skipped
    assert not any("/." in "/" + p or p.endswith(".txt") for p in src.paths)
    # same file name in two folders: two rows, with their own labels
    assert {"cat/same.png", "dog/same.png"} <= set(src.paths)
    assert src.labels[src.paths.index("cat/same.png")] == 1
    assert src.labels[src.paths.index("dog/same.png")] == 2
    assert src.paths == sorted(src.paths)  # deterministic order
    assert any(p.endswith(".PNG") for p in src.paths) and any(p.endswith(".Jpeg") for p in src.paths)
    assert src.splits is None


def test_split_folders_are_recorded_per_row(split_folder):
    src = open_source(split_folder)
    assert src.class_names == ["a", "b"]
    assert sorted(set(src.splits)) == ["test", "train", "val"]
    assert src.splits.count("train") == 12 and src.splits.count("val") == 4
    for path, split in zip(src.paths, src.splits):
        assert path.startswith(split + "/")


def test_csv_labels_splits_and_relative_paths(csv_dataset):
    src = open_source(csv_dataset)
    assert src.class_names == ["blue", "green", "red"]
    assert len(src) == 24
    assert set(src.splits) == {"train", "val", "test"}
    assert all((csv_dataset.parent / p).is_file() for p in src.paths)


def test_unlabelled_folder(unlabelled_folder):
    src = open_source(unlabelled_folder)
    assert len(src) == 5 and src.class_names == []
    assert (src.labels == UNLABELLED).all()


@pytest.mark.parametrize("content, message", [
    ("file,label\na.png,x\n", "lacks column(s) path"),
    ("path,label\nmissing.png,x\n", "do not exist"),
    ("path,label,split\nimg.png,x,training\n", "split must be one of"),
    ("path,label\nimg.png,x\nimg.png,y\n", "line 2 (img.png: label x) and line 3 (img.png: label y) are the same file"),
    ("path,label\n", "no rows"),
])
def test_csv_errors_name_the_problem(tmp_path, make_image, content, message):
    make_image(tmp_path / "img.png", 0, 0)
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(FeatcacheError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_source(tmp_path / "bad.csv")


def test_folder_errors(tmp_path, make_image):
    with pytest.raises(FeatcacheError, match="no such file or folder"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatcacheError, match="no images found"):
        open_source(tmp_path / "empty")
    make_image(tmp_path / "withempty" / "a" / "1.png", 0, 0)
    (tmp_path / "withempty" / "b").mkdir()
    with pytest.raises(FeatcacheError, match=r"class folder .*b holds no images"):
        open_source(tmp_path / "withempty")
    make_image(tmp_path / "mixed" / "a" / "1.png", 0, 0)
    make_image(tmp_path / "mixed" / "loose.png", 0, 1)
    with pytest.raises(FeatcacheError, match="both class folders and loose images"):
        open_source(tmp_path / "mixed")
    make_image(tmp_path / "splitmix" / "train" / "a" / "1.png", 0, 0)
    make_image(tmp_path / "splitmix" / "other" / "1.png", 0, 0)
    with pytest.raises(FeatcacheError, match="mixes split folders"):
        open_source(tmp_path / "splitmix")


def test_manifest_tracks_size_mtime_and_optional_hash(class_folder):
    src = open_source(class_folder)
    m = src.manifest()
    assert len(m["size"]) == len(m["mtime_ns"]) == 12 and m["sha256"] is None
    assert len(src.manifest(hash_content=True)["sha256"][0]) == 64


def test_torch_dataset_source():
    class Tiny(torch.utils.data.Dataset):
        classes = ["zero", "one"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((3, 8, 8), i * 40, dtype=torch.uint8), i % 2

    src = from_dataset(Tiny())
    assert src.class_names == ["zero", "one"] and src.labels.tolist() == [0, 1, 0, 1]
    assert len(src.manifest()["content_sha256"]) == 64


def test_symlink_cycles_and_twice_reached_files_add_no_rows(tmp_path, make_image, caplog):
    """``cat/loop -> ..`` (a cycle up to the dataset's root), a link to another class folder, a second link to an
    outside folder and a link to a file of the same folder: 10 cat images + 1 outside image + 3 dog images."""
    import logging
    import os

    root = tmp_path / "photos"
    for i in range(10):
        make_image(root / "cat" / f"{i}.png", 0, i)
    for i in range(3):
        make_image(root / "dog" / f"{i}.png", 1, i)
    make_image(tmp_path / "outside" / "x.png", 0, 99)
    os.symlink("..", root / "cat" / "loop")
    os.symlink("../dog", root / "cat" / "dogs")
    os.symlink(tmp_path / "outside", root / "cat" / "more")
    os.symlink(tmp_path / "outside", root / "cat" / "more_again")
    os.symlink("0.png", root / "cat" / "again.png")
    with caplog.at_level(logging.INFO, logger="featcache"):
        src = open_source(root)
    assert len(src) == 14 and len(set(src.paths)) == 14
    assert [p for p in src.paths if p.startswith("cat/")] == [f"cat/{i}.png" for i in range(10)] + ["cat/more/x.png"]
    assert "cat/again.png is the same file as" in caplog.text and "not following" in caplog.text


def test_a_link_into_another_class_or_split_never_relabels_its_images(tmp_path, make_image):
    """``train/cat/x -> ../../test/cat/sub`` would put test images into train as cats; ``cat/y -> ../dog/sub``
    would call dogs cats: neither link is followed, and those images keep their own split and class."""
    import os

    root = tmp_path / "data"
    for split in ("train", "test"):
        for k, cls in enumerate(("cat", "dog")):
            make_image(root / split / cls / "a.png", k, 0)
            make_image(root / split / cls / "sub" / "b.png", k, 1)
    os.symlink("../../test/cat/sub", root / "train" / "cat" / "x")
    os.symlink("../dog/sub", root / "train" / "cat" / "y")
    src = open_source(root)
    assert sorted(src.paths) == sorted(f"{s}/{c}/{f}" for s in ("train", "test") for c in ("cat", "dog")
                                       for f in ("a.png", "sub/b.png"))


def test_one_real_file_is_one_row_with_the_class_of_its_real_place(tmp_path, make_image, caplog):
    """A file link from class a to class b's image (``a/z.png -> ../b/x.png``) once gave one row labelled a and
    lost ``b/x.png``; a hard link within one folder gave two rows. Real links on disk."""
    import logging
    import os

    root = tmp_path / "photos"
    for k, cls in enumerate(("a", "b")):
        for i in range(3):
            make_image(root / cls / f"x{i}.png", k, i)
    os.symlink("../b/x0.png", root / "a" / "z.png")  # a symbolic link into another class
    os.link(root / "a" / "x1.png", root / "a" / "hard.png")  # a hard link in the same folder
    with caplog.at_level(logging.INFO, logger="featcache"):
        src = open_source(root)
    got = dict(zip(src.paths, (src.class_names[i] for i in src.labels)))
    every = {f"{c}/x{i}.png": c for c in ("a", "b") for i in range(3)}
    assert got == {"a/hard.png": "a", **{p: c for p, c in every.items() if p != "a/x1.png"}}  # x1 = hard: one row
    assert "a/z.png is a link from class a to" in caplog.text and "b/x0.png: one row, in class b" in caplog.text


@pytest.mark.parametrize("layout", ["hard link across classes", "hard link across splits",
                                    "two classes link one outside folder"])
def test_two_classes_or_splits_holding_one_file_is_an_error_naming_both(tmp_path, make_image, layout):
    import os

    root = tmp_path / "photos"
    if layout == "hard link across splits":
        for split in ("train", "test"):
            make_image(root / split / "a" / "x.png", 0, 0 if split == "train" else 1)
        os.link(root / "train" / "a" / "x.png", root / "test" / "a" / "same.png")
        both = ("train/a/x.png", "test/a/same.png")
    else:
        for k, cls in enumerate(("a", "b")):
            make_image(root / cls / "x.png", k, 0)
        if layout == "hard link across classes":
            os.link(root / "a" / "x.png", root / "b" / "same.png")
            both = ("a/x.png", "b/same.png")
        else:
            make_image(tmp_path / "outside" / "o.png", 0, 9)
            os.symlink(tmp_path / "outside", root / "a" / "ext")
            os.symlink(tmp_path / "outside", root / "b" / "ext")
            both = ("a/ext/o.png", "b/ext/o.png")
    with pytest.raises(FeatcacheError, match="are the same file") as e:
        open_source(root)
    assert all(str(root / p) in str(e.value) for p in both), str(e.value)


@pytest.mark.parametrize("second", ["a/../a/x.png", "./a//x.png", "sub/x2.png (a link)", "a/x2.png (a hard link)"])
def test_a_csv_listing_one_file_twice_under_another_label_or_split_is_an_error(tmp_path, make_image, second):
    """``a/x.png,cat,train`` with ``a/../a/x.png,dog,test`` (or a link to it) once kept the same image in train as
    a cat and in test as a dog."""
    import os

    make_image(tmp_path / "a" / "x.png", 0, 0)
    make_image(tmp_path / "a" / "y.png", 1, 1)
    spelled = second.split(" ")[0]
    if "(a link)" in second:
        (tmp_path / "sub").mkdir()
        os.symlink("../a/x.png", tmp_path / "sub" / "x2.png")
    elif "hard" in second:
        os.link(tmp_path / "a" / "x.png", tmp_path / "a" / "x2.png")
    (tmp_path / "data.csv").write_text(f"path,label,split\na/x.png,cat,train\na/y.png,cat,train\n{spelled},dog,test\n")
    with pytest.raises(FeatcacheError, match=r"line 2 \(a/x.png: label cat, split train\) and line 4 "):
        open_source(tmp_path / "data.csv")


def test_identical_repeats_in_a_csv_are_one_row_with_a_note(tmp_path, make_image, caplog):
    import logging

    make_image(tmp_path / "a" / "x.png", 0, 0)
    make_image(tmp_path / "a" / "y.png", 1, 1)
    (tmp_path / "data.csv").write_text("path,label\n./a/x.png,cat\na/y.png,dog\na/../a/x.png,cat\n")
    with caplog.at_level(logging.WARNING, logger="featcache"):
        src = open_source(tmp_path / "data.csv")
    assert src.paths == ["a/x.png", "a/y.png"] and [src.class_names[i] for i in src.labels] == ["cat", "dog"]
    assert "line 4 lists the same file as line 2 (a/x.png), with the same label: one row" in caplog.text
