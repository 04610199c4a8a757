"""Training data: label mapping into campipe's space with known masks, split, augmentation, synthesis, body skin."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from campipe.segmentation.training import datasets as D
from campipe.segmentation.training.augment import AugmentConfig, augment, geometric, resize_only
from campipe.segmentation.training.batches import collate
from campipe.segmentation.training.skin import derive_body_skin, fit_skin_model, skin_distance2
from campipe.segmentation.training.synth import person_cutouts, swap_background, synth_scene

C = {c: i for i, c in enumerate(D.CLASSES)}


def _u(lab):
    return D.unpack(lab)


def test_celebamask_mapping_exact():
    raw = np.array([[0, 1, 13, 10], [3, 17, 18, 2]], np.uint8)
    lab, ik = D.map_labels("celebamask", raw)
    u = _u(lab)
    assert ik
    np.testing.assert_array_equal(u["sem"][C["person"]], raw != 0)
    np.testing.assert_array_equal(u["sem"][C["hair"]], raw == 13)
    np.testing.assert_array_equal(u["sem"][C["skin"]], np.isin(raw, (1, 2, 8, 9, 17)))
    np.testing.assert_array_equal(u["sem"][C["teeth"]], raw == 10)
    np.testing.assert_array_equal(u["sem"][C["glasses"]], raw == 3)
    # everything known except sky, which is known (negative) only on person pixels
    for c in ("person", "hair", "skin", "teeth", "glasses"):
        assert u["known"][C[c]].all()
    np.testing.assert_array_equal(u["known"][C["sky"]], raw != 0)
    assert not u["sem"][C["sky"]].any()
    np.testing.assert_array_equal(u["inst"], (raw != 0).astype(np.uint8))
    assert u["valid"].all()


def test_hair_sets_only_hair_known():
    raw = np.array([[0, 255], [255, 0]], np.uint8)
    for s in ("figaro1k", "lfw_hair"):
        lab, ik = D.map_labels(s, raw)
        u = _u(lab)
        assert not ik
        np.testing.assert_array_equal(u["sem"][C["hair"]], raw == 255)
        assert u["known"][C["hair"]].all()
        # non-hair pixels: person, skin, sky ... unknown (a hair set must not teach "no person here")
        for c in ("person", "sky", "skin", "teeth", "glasses"):
            assert not u["known"][c if isinstance(c, int) else C[c]][raw == 0].any()
        # hair pixels are person and not sky
        assert u["sem"][C["person"]][raw == 255].all() and u["known"][C["person"]][raw == 255].all()
        assert u["known"][C["sky"]][raw == 255].all() and not u["sem"][C["sky"]].any()


def test_camvid_mapping_and_unlabelled():
    raw = np.array([[0, 9, 10, 11, 3]], np.uint8)
    lab, ik = D.map_labels("camvid", raw)
    u = _u(lab)
    assert not ik  # a pedestrian without instance label
    np.testing.assert_array_equal(u["sem"][C["sky"]][0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(u["known"][C["sky"]][0], [1, 1, 1, 0, 1])
    np.testing.assert_array_equal(u["sem"][C["person"]][0], [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(u["known"][C["person"]][0], [1, 1, 0, 0, 1])  # bicyclist, unlabelled unknown
    np.testing.assert_array_equal(u["known"][C["hair"]][0], [1, 0, 0, 0, 1])  # no hair outside people
    _, ik2 = D.map_labels("camvid", np.array([[0, 3]], np.uint8))
    assert ik2  # no person at all: the instance set (empty) is complete


def test_pennfudan_instances_and_derived_skin():
    raw = np.zeros((40, 30), np.uint8)
    raw[5:35, 3:12] = 1
    raw[8:38, 16:27] = 2
    img = np.full((40, 30, 3), 60, np.uint8)
    lab, ik = D.map_labels("pennfudan", raw, img)
    u = _u(lab)
    assert ik
    np.testing.assert_array_equal(u["inst"], raw)
    np.testing.assert_array_equal(u["sem"][C["person"]], raw > 0)
    assert u["known"][C["person"]].all()
    assert not u["known"][C["hair"]][raw > 0].any() and u["known"][C["hair"]][raw == 0].all()
    assert not u["sem"][C["skin"]][raw == 0].any() and u["known"][C["skin"]][raw == 0].all()


def test_hair_absent_below_head_exact():
    """Hair becomes known-absent on each person's pixels below the top ``frac`` of its own height, only where hair
    was unknown; labelled hair (a pasted face's), the background and every other plane stay as they were."""
    raw = np.zeros((40, 30), np.uint8)
    raw[5:35, 3:12] = 1  # rows 5..34: height 30, head line at 5 + 0.35 * 30 = 15.5 -> rows 16..34
    raw[8:18, 16:27] = 2  # rows 8..17: height 10, line at 11.5 -> rows 12..17
    lab, _ = D.map_labels("pennfudan", raw, np.full((40, 30, 3), 60, np.uint8))
    lab[20:22, 5:7, 0] |= np.uint8(1 << C["hair"])  # a labelled hair patch low on person 1 (e.g. a pasted face)
    lab[20:22, 5:7, 1] |= np.uint8(1 << C["hair"])
    out = D.hair_absent_below_head(lab)
    u, v = _u(lab), _u(out)
    want = np.zeros((40, 30), bool)
    want[16:35, 3:12] = True
    want[12:18, 16:27] = True
    newly = (v["known"][C["hair"]] == 1) & (u["known"][C["hair"]] == 0)
    np.testing.assert_array_equal(newly, want & (u["known"][C["hair"]] == 0))
    assert not newly[:16, 3:12].any() and not newly[8:12, 16:27].any()  # heads (top 35 %) stay unknown
    np.testing.assert_array_equal(v["sem"], u["sem"])  # no label changes, only knowledge
    assert v["sem"][C["hair"]][20:22, 5:7].all() and v["known"][C["hair"]][20:22, 5:7].all()
    for k in range(len(C)):
        if k != C["hair"]:
            np.testing.assert_array_equal(v["known"][k], u["known"][k])
    np.testing.assert_array_equal(out[..., 2], lab[..., 2])
    full = _u(D.hair_absent_below_head(lab, 1.0))["known"][C["hair"]]
    np.testing.assert_array_equal(full, u["known"][C["hair"]])  # frac 1: nothing below any head line
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="frac"):
            D.hair_absent_below_head(lab, bad)


def test_unknown_on_bare_skin_exact():
    """The given classes become unknown on background pixels of the labelled skin's colour that touch the person: a
    bare shoulder next to the neck, not a skin-coloured patch far from it, not a differently coloured region touching
    it; labels, and every other class's knowledge, unchanged."""
    rng = np.random.default_rng(0)
    raw = np.zeros((60, 60), np.uint8)
    raw[5:30, 20:40] = 1    # face skin
    raw[30:45, 25:35] = 17  # neck (skin)
    raw[45:60, 10:50] = 18  # cloth
    img = np.full((60, 60, 3), (40, 90, 160), np.uint8)  # blue backdrop
    skin = (200, 150, 120)
    img[(raw == 1) | (raw == 17)] = skin
    img[35:45, 35:50] = skin    # bare shoulder: background, touching the neck
    img[2:10, 50:58] = skin     # skin-coloured patch far from the person
    img[45:60, 10:50] = (60, 60, 60)
    img = np.clip(img.astype(int) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
    lab, _ = D.map_labels("celebamask", raw)
    want = np.zeros((60, 60), bool)
    want[35:45, 35:50] = True
    np.testing.assert_array_equal(D.bare_skin(img, raw > 0, np.isin(raw, (1, 17))), want)
    u = _u(lab)
    assert u["known"][C["person"]].all() and u["known"][C["skin"]].all()
    for classes in (("person",), ("skin",), ("person", "skin")):
        out = D.unknown_on_bare_skin(lab, img, classes)
        v = _u(out)
        for k in range(len(C)):
            if D.CLASSES[k] in classes:
                np.testing.assert_array_equal(v["known"][k] == 0, want)
            else:
                np.testing.assert_array_equal(v["known"][k], u["known"][k])
        np.testing.assert_array_equal(v["sem"], u["sem"])
        np.testing.assert_array_equal(out[..., 2], lab[..., 2])
    np.testing.assert_array_equal(D.unknown_on_bare_skin(lab, img), D.unknown_on_bare_skin(lab, img, ("person",)))
    for bad in ((), ("hair",), ("skin", "sky")):
        with pytest.raises(ValueError, match="among"):
            D.unknown_on_bare_skin(lab, img, bad)
    # too little labelled skin to fit a colour model: unchanged
    few = np.zeros_like(raw)
    few[10:14, 10:14] = 1
    lab2, _ = D.map_labels("celebamask", few)
    np.testing.assert_array_equal(D.unknown_on_bare_skin(lab2, img, ("person", "skin")), lab2)


def test_sky_absent_on_portraits_exact():
    """Sky becomes known absent on a CelebAMask frame's background too; nothing else changes."""
    raw = np.zeros((20, 20), np.uint8)
    raw[5:15, 5:15] = 1
    lab, _ = D.map_labels("celebamask", raw)
    u, v = _u(lab), _u(D.sky_absent_on_portraits(lab))
    assert not u["known"][C["sky"]][0, 0] and u["known"][C["sky"]][10, 10]
    assert v["known"][C["sky"]].all() and not v["sem"][C["sky"]].any()
    for k in range(len(C)):
        np.testing.assert_array_equal(v["sem"][k], u["sem"][k])
        if k != C["sky"]:
            np.testing.assert_array_equal(v["known"][k], u["known"][k])


def test_unknown_set_rejected():
    with pytest.raises(ValueError, match="unknown data set"):
        D.map_labels("nope", np.zeros((2, 2), np.uint8))


def test_split_deterministic_and_disjoint():
    stems = [f"img{i:04d}" for i in range(400)]
    val = [s for s in stems if D.is_val("celebamask", s)]
    assert val == [s for s in stems if D.is_val("celebamask", s)]
    assert 0.08 < len(val) / len(stems) < 0.22


def _toy_record(h=48, w=64):
    raw = np.zeros((h, w), np.uint8)
    raw[10:40, 20:44] = 1   # face skin
    raw[4:12, 18:46] = 13  # hair
    raw[40:, 10:54] = 18  # cloth
    img = np.zeros((h, w, 3), np.uint8)
    img[raw == 1] = (200, 150, 120)
    img[raw == 13] = (40, 30, 20)
    img[raw == 18] = (30, 60, 160)
    lab, ik = D.map_labels("celebamask", raw)
    return D.Record("celebamask", "toy", img, lab, ik), raw


def test_augment_keeps_labels_on_their_pixels(rng):
    rec, _ = _toy_record()
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue_deg=0, p_blur_resize=0)
    for _ in range(10):
        img, lab = augment(rec.image, rec.lab, (32, 32), rng, cfg)
        u = _u(lab)
        skin = u["sem"][C["skin"]].astype(bool) & u["valid"].astype(bool)
        # nearest-warped labels stay consistent with the bilinear-warped colours away from edges
        if skin.sum() > 20:
            inner = skin & np.roll(skin, 1, 0) & np.roll(skin, -1, 0) & np.roll(skin, 1, 1) & np.roll(skin, -1, 1)
            if inner.any():
                assert np.abs(img[inner].astype(int) - (200, 150, 120)).max() <= 12
        # outside the photo: nothing known
        invalid = u["valid"] == 0
        assert not u["known"][:, invalid].any()


def test_small_rotation_masks_invalid_corners(rng):
    rec, _ = _toy_record()
    cfg = AugmentConfig(p_small_rot=1.0, max_small_rot_deg=15.0, min_area=1.0, max_area=1.0, p_rot90=0,
                        p_rot180=0, p_letterbox=0)
    found = False
    for _ in range(8):
        _, lab = geometric(rec.image, rec.lab, (48, 64), rng, cfg)
        v = _u(lab)["valid"]
        found |= bool((v == 0).any())
    assert found


def test_resize_only_identity_at_same_size():
    rec, _ = _toy_record()
    img, lab = resize_only(rec.image, rec.lab, rec.image.shape[:2])
    np.testing.assert_array_equal(lab, rec.lab)
    np.testing.assert_array_equal(img, rec.image)


def test_synth_scene_exact_instances(rng):
    bg_raw = np.full((60, 80), 3, np.uint8)
    bg_raw[:20] = 0
    bg_lab, _ = D.map_labels("camvid", bg_raw)
    bg = D.Record("camvid", "bg", np.full((60, 80, 3), 90, np.uint8), bg_lab, True)
    rec, _ = _toy_record()
    cut = person_cutouts([rec], min_pixels=10)
    assert len(cut) == 1
    s = synth_scene(bg, cut, rng, n_people=3)
    u = _u(s.lab)
    assert s.inst_known
    person = u["sem"][C["person"]].astype(bool)
    # instance ids cover exactly the person pixels (no pedestrians in this background)
    np.testing.assert_array_equal(u["inst"] > 0, person)
    assert set(np.unique(u["inst"])) - {0} <= {1, 2, 3}
    # a pasted person hides the sky label under it
    assert not (u["sem"][C["sky"]].astype(bool) & person).any()
    assert u["known"][:, person].all()


def _street(h=60, w=80, ped=True):
    raw = np.full((h, w), 3, np.uint8)  # road
    raw[:20] = 0  # sky
    if ped:
        raw[25:50, 60:66] = 9  # a pedestrian
    lab, ik = D.map_labels("camvid", raw)
    img = np.full((h, w, 3), 90, np.uint8)
    img[:20] = (120, 170, 230)
    return D.Record("camvid", "bg", img, lab, ik)


def test_swap_background_keeps_the_person_exactly(rng):
    rec, raw = _toy_record()
    for _ in range(10):  # every kind of backdrop (gradient, sharp, defocused) comes up
        s = swap_background(rec, _street(), rng)
        person = raw != 0
        assert s.set_name == "celebamask" and s.inst_known and s.image.shape == rec.image.shape
        np.testing.assert_array_equal(s.lab[person], rec.lab[person])  # labels of the person untouched
        inner = cv2.erode(person.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
        np.testing.assert_array_equal(s.image[inner], rec.image[inner])  # pixels too, but for the feathered edge
        u = _u(s.lab)
        bg = ~person
        assert not u["sem"][:, bg].any() and not u["inst"][bg].any() and u["valid"][bg].all()
        # the background: known negative for everything but sky, or wholly unknown where a pedestrian may show
        unknown = u["known"][C["person"]] == 0
        assert not unknown[person].any()
        np.testing.assert_array_equal(u["inst_ignore"].astype(bool), unknown)
        assert not u["known"][:, unknown].any()
        known_bg = bg & ~unknown
        assert not u["known"][C["sky"]][bg].any()
        for c in ("person", "hair", "skin", "teeth", "glasses"):
            assert u["known"][C[c]][known_bg].all()


def test_swap_background_replaces_the_backdrop_and_is_seeded():
    rec, raw = _toy_record()
    bg = ~(raw != 0)
    a = swap_background(rec, _street(ped=False), np.random.default_rng(5))
    b = swap_background(rec, _street(ped=False), np.random.default_rng(5))
    np.testing.assert_array_equal(a.image, b.image)
    assert not (_u(a.lab)["inst_ignore"]).any()  # no pedestrian in this street: the whole backdrop is known
    changed = [np.abs(swap_background(rec, _street(), np.random.default_rng(k)).image[bg].astype(int)).mean()
               for k in range(6)]
    assert min(changed) > 5  # the toy's black background is gone (backdrops are streets or gradients)
    with pytest.raises(ValueError, match="CelebAMask"):
        swap_background(_street(), _street(), np.random.default_rng(0))


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_sampler_swaps_portrait_backgrounds_only_when_asked(p):
    from campipe.segmentation.training.batches import Sampler, SamplerConfig

    rec, raw = _toy_record()
    recs = {"celebamask": [rec], "camvid": [_street()]}
    cfg = SamplerConfig(set_weights={"celebamask": 1.0}, synth_fraction=0.0, p_bgswap=p)
    drawn = Sampler(recs, cfg).draw(np.random.default_rng(0))
    assert (drawn is rec) == (p == 0.0)
    if p:
        assert drawn.stem.startswith("toy/bg:")
    with pytest.raises(ValueError, match="backdrops"):
        Sampler({"celebamask": [rec]}, SamplerConfig(set_weights={"celebamask": 1.0}, p_bgswap=0.5))


def test_collate_shapes_and_known_exclusion(rng):
    rec, _ = _toy_record()
    imgs = np.stack([rec.image] * 2)
    labs = np.stack([rec.lab] * 2)
    labs[1, :, :8, 1] = 0  # first columns invalid / unknown
    b = collate(imgs, labs, [True, False], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert b["image"].shape == (2, 3, 48, 64) and b["sem"].shape == (2, 6, 48, 64)
    assert b["known"][1, :, :, :8].sum() == 0
    assert len(b["instances"]) == 2 and b["instances"][0].shape == (1, 48, 64)
    assert b["inst_known"].tolist() == [True, False]


def test_body_skin_from_face_model():
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 90, 40)  # green background
    person = np.zeros((h, w), bool)
    person[5:40, 10:50] = True
    face = np.zeros((h, w), bool)
    face[5:15, 22:38] = True
    arm = np.zeros((h, w), bool)
    arm[20:38, 10:16] = True
    shirt = person & ~face & ~arm
    img[person] = (40, 60, 170)    # blue shirt
    img[face] = (205, 150, 125)    # face skin
    img[arm] = (195, 140, 118)     # arm: same skin tone, slightly darker
    sk = derive_body_skin(img, person, face_skin=face)
    assert (sk[arm] == 1).all()
    assert (sk[shirt] == 0).all()
    assert (sk[~person] == 0).all()
    m = fit_skin_model(img, face)
    assert skin_distance2(img, m)[arm].max() < skin_distance2(img, m)[shirt].min()


@pytest.mark.shared_data
def test_real_sets_map(shared_data):
    for s in D.SETS:
        recs = D.load_set(shared_data, s, "val", max_side=128, threads=1, limit=2)
        assert len(recs) == 2
        for r in recs:
            u = _u(r.lab)
            assert r.image.dtype == np.uint8 and r.image.shape[:2] == r.lab.shape[:2]
            assert u["known"].any()
    train = set(D.list_stems(shared_data, "camvid", "train"))
    val = set(D.list_stems(shared_data, "camvid", "val"))
    assert train and val and not (train & val)


def test_full_body_skin_truth_is_polygon_inside_person():
    from campipe.segmentation.training.skin_check import _prf, full_body_truth

    raw = np.zeros((10, 10), np.uint8)
    raw[2:8, 2:8] = 1                                   # one person
    gt, person = full_body_truth(raw, [[[0, 0], [4, 0], [4, 4], [0, 4]]])  # square 0..4 overlapping the person
    assert person.sum() == 36
    assert gt.sum() == 9 and gt[2:5, 2:5].all()         # only the part inside the person (rows/cols 2..4)
    pred = np.zeros_like(gt)
    pred[2:4, 2:8] = True                               # 12 px predicted: 6 right, 6 wrong; 3 missed
    assert _prf(pred, gt, person) == (6, 6, 3)


def test_full_body_labels_file_is_well_formed():
    import json

    from campipe.segmentation.training.skin_check import FULL_BODY_LABELS

    doc = json.loads(FULL_BODY_LABELS.read_text())
    assert doc["set"] == "pennfudan" and len(doc["images"]) >= 3
    for stem, polys in doc["images"].items():
        assert polys and all(len(p) >= 3 and all(len(xy) == 2 for xy in p) for p in polys), stem


def test_compact_collate_then_finalize_equals_float_collate(rng):
    from campipe.segmentation.training.batches import finalize_batch

    rec, _ = _toy_record()
    imgs = np.stack([rec.image, rec.image[::-1].copy()])
    labs = np.stack([rec.lab, rec.lab[::-1].copy()])
    labs[1, :, :8, 1] = 0
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = collate(imgs, labs, [True, False], mean, std)
    c = collate(imgs, labs, [True, False], mean, std, compact=True)
    assert c["image"].dtype == torch.uint8 and c["sem"].dtype == torch.uint8 and c["known"].dtype == torch.uint8
    assert all(t.dtype == torch.uint8 for t in c["instances"])
    f = finalize_batch(c, mean, std)
    assert f["image"].shape == ref["image"].shape and f["image"].dtype == torch.float32
    assert torch.allclose(f["image"], ref["image"], atol=1e-5)
    for k in ("sem", "known", "inst_valid"):
        assert f[k].dtype == torch.float32 and torch.equal(f[k], ref[k]), k
    assert len(f["instances"]) == len(ref["instances"])
    for a, b in zip(f["instances"], ref["instances"]):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(f["inst_known"], ref["inst_known"])
