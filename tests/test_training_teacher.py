"""Teacher person labels on the hair-only sets: exact mapping on tiny arrays, known masks, the loaders' use of stored
teacher maps (cache keyed separately, clear error when a map is missing), and the teacher score on a tiny set."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from campipe.segmentation.training import datasets as D
from campipe.segmentation.training.teacher import TEACHER_HI, TEACHER_LO, read_teacher, score, teacher_person

C = {c: i for i, c in enumerate(D.CLASSES)}


def test_teacher_person_exact():
    prob = np.array([[255, 230, 128], [40, 0, 10]], np.uint8)     # 1.0, 0.90, 0.50 / 0.16, 0.0, 0.04
    hair = np.array([[False, False, False], [False, False, True]])
    person, known = teacher_person(prob, hair)
    assert person.tolist() == [[True, True, False], [False, False, True]]   # hair is person whatever the teacher
    assert known.tolist() == [[True, True, False], [True, True, True]]      # 0.5 is unknown
    assert TEACHER_LO < 0.5 < TEACHER_HI
    with pytest.raises(ValueError, match="differ in size"):
        teacher_person(prob, hair[:, :2])


def test_hair_set_mapping_with_teacher():
    raw = np.array([[0, 255, 0, 0]], np.uint8)
    teacher = np.array([[250, 10, 128, 5]], np.uint8)
    for s in ("figaro1k", "lfw_hair"):
        u = D.unpack(D.map_labels(s, raw, teacher=teacher)[0])
        assert u["sem"][C["person"]].tolist() == [[1, 1, 0, 0]]
        assert u["known"][C["person"]].tolist() == [[1, 1, 0, 1]]
        assert u["sem"][C["hair"]].tolist() == [[0, 1, 0, 0]] and u["known"][C["hair"]].all()
        assert u["known"][C["sky"]].tolist() == [[1, 1, 0, 0]]               # people are not sky
        for c in ("skin", "teeth", "glasses"):
            assert not u["known"][C[c]].any()
    # without a teacher: exactly the hair-only labels
    u = D.unpack(D.map_labels("figaro1k", raw)[0])
    assert u["known"][C["person"]].tolist() == [[0, 1, 0, 0]]
    with pytest.raises(ValueError, match="teacher"):
        D.map_labels("celebamask", raw, teacher=teacher)


def _write_set(root: Path, set_name: str, n: int, teacher_dir: Path | None, teacher_value: int = 255) -> list[str]:
    (root / set_name / "images").mkdir(parents=True, exist_ok=True)
    (root / set_name / "masks").mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(n):
        stem = f"s{i}"
        img = np.full((20, 30, 3), 90, np.uint8)
        raw = np.zeros((20, 30), np.uint8)
        raw[:5] = 255 if set_name != "celebamask" else 13
        raw[5:12, 5:25] = 255 if set_name != "celebamask" else 1
        cv2.imwrite(str(root / set_name / "images" / f"{stem}.png"), img)
        cv2.imwrite(str(root / set_name / "masks" / f"{stem}.png"), raw)
        if teacher_dir is not None:
            (teacher_dir / set_name).mkdir(parents=True, exist_ok=True)
            t = np.zeros((40, 60), np.uint8)                          # stored at another size: resized on read
            t[:24] = teacher_value
            cv2.imwrite(str(teacher_dir / set_name / f"{stem}.png"), t)
        stems.append(stem)
    return stems


def test_loaders_use_teacher_maps_and_key_the_cache(tmp_path):
    data, tdir, cache = tmp_path / "data", tmp_path / "teacher", tmp_path / "cache"
    _write_set(data, "figaro1k", 3, tdir)
    recs = D.load_cached(data, "figaro1k", "all", 384, cache, threads=1, teacher_dir=tdir)
    plain = D.load_cached(data, "figaro1k", "all", 384, cache, threads=1)
    assert sorted(p.name for p in cache.iterdir()) == ["figaro1k_all_384_v1.npz", "figaro1k_all_384_v1_teacher.npz"]
    u, v = D.unpack(recs[0].lab), D.unpack(plain[0].lab)
    assert u["sem"][C["person"]][:12].all() and not u["sem"][C["person"]][12:].any()
    assert u["known"][C["person"]].all()                          # confident everywhere (255 / 0)
    assert v["known"][C["person"]].sum() < u["known"][C["person"]].sum()
    again = D.load_cached(data, "figaro1k", "all", 384, cache, threads=1, teacher_dir=tdir)   # from the cache
    np.testing.assert_array_equal(again[0].lab, recs[0].lab)
    # a labelled set ignores teacher_dir
    _write_set(data, "celebamask", 1, None)
    D.load_set(data, "celebamask", "all", 384, threads=1, teacher_dir=tdir)
    # a missing teacher map is a clear error
    (tdir / "figaro1k" / "s1.png").unlink()
    with pytest.raises(FileNotFoundError, match="teacher label missing"):
        D.load_set(data, "figaro1k", "all", 384, threads=1, teacher_dir=tdir)


def test_teacher_score_on_tiny_set(tmp_path):
    data, tdir = tmp_path / "data", tmp_path / "teacher"
    _write_set(data, "celebamask", 2, tdir)
    m = read_teacher(tdir, "celebamask", "s0", (20, 30))
    assert m.shape == (20, 30) and m[:12].min() == 255 and m[12:].max() == 0
    r = score(data, tdir, sets=("celebamask",), split="all")["celebamask"]
    # label: rows 0-4 all 30 columns + rows 5-11 columns 5-24; teacher: rows 0-11 -> IoU (150 + 140) / 360
    assert r["n_images"] == 2 and r["iou_person"] == pytest.approx(290 / 360)


def test_pack_data_carries_teacher_maps(tmp_path):
    """The packed training split (for a rented GPU) is a drop-in data folder, teacher maps included."""
    from campipe.segmentation.training.datasets import is_val
    from campipe.segmentation.training.pack_data import pack_one

    data, tdir, out = tmp_path / "data", tmp_path / "teacher", tmp_path / "packed"
    stems = [s for s in _write_set(data, "figaro1k", 6, tdir) if not is_val("figaro1k", s)]
    assert stems
    for st in stems:
        assert pack_one(data, out, "figaro1k", st, 16, 82, tdir) > 0
    t = cv2.imread(str(out / "teacher" / "figaro1k" / f"{stems[0]}.png"), cv2.IMREAD_GRAYSCALE)
    raw = cv2.imread(str(out / "figaro1k" / "masks" / f"{stems[0]}.png"), cv2.IMREAD_GRAYSCALE)
    assert t.shape == raw.shape == (11, 16)                         # 20x30 downscaled to a long side of 16
    recs = D.load_set(out, "figaro1k", "train", 384, threads=1, teacher_dir=out / "teacher")
    assert len(recs) == len(stems) and D.unpack(recs[0].lab)["known"][C["person"]].mean() > 0.9
