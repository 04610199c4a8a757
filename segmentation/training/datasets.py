"""Loaders mapping every labelled set of ``../shared/data`` into campipe's label space, with per-pixel "known" masks.

Label space (bit order = :data:`CLASSES`, the model's ``semantic_classes``): sky, person, hair, skin, teeth, glasses.

Every sample is stored compactly as

* ``image``: uint8 (H, W, 3) display-referred sRGB, RGB order (what the photos in the sets are);
* ``lab``: uint8 (H, W, 3) packed targets:
  - ``lab[..., 0]`` bit c = 1 where class c is present (target 1);
  - ``lab[..., 1]`` bit c = 1 where class c is *known* at that pixel (label valid; the loss only looks there);
    bit :data:`INST_IGNORE_BIT` = 1 where the instance loss must ignore the pixel (e.g. an unlabelled pedestrian);
    bit :data:`VALID_BIT` = 1 inside the image (0 in padding / rotated-out regions);
  - ``lab[..., 2]`` person instance id (0 = none, 1..255);
* ``inst_known``: whether the person *instances* of the sample are labelled completely (Hungarian instance loss).

A set that does not label a class leaves its known bit at 0, so it never teaches the model that the class is absent
(the issue's rule). Where logic gives a label for free it is used: hair pixels are person and are not sky; a CamVid
pixel that is not a pedestrian/bicyclist has no hair/skin/teeth/glasses; a CelebAMask person pixel is not sky.

Packing the targets into 3 uint8 planes lets a single OpenCV warp (nearest) carry all labels through augmentation
(:mod:`.augment`) and keeps the in-memory cache small (about 2 bytes per pixel of labels).

Split: deterministic, ``md5(set/stem) % 100 < 15`` -> validation (:func:`is_val`); validation stems never reach
training.

Label maps: see ``../shared/data/README.md`` (CelebAMask-HQ ids, Figaro1k/LFW 255 = hair, CamVid SegNet 11 classes,
Penn-Fudan instance ids). References: CelebAMask-HQ (Lee et al. 2020), Figaro1k (Svanera et al. 2016), LFW Part Labels
(Kae et al. 2013), CamVid (Brostow et al. 2008), Penn-Fudan (Wang et al. 2007).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .teacher import TEACHER_SETS, read_teacher, teacher_person

CLASSES = ("sky", "person", "hair", "skin", "teeth", "glasses")
SKY, PERSON, HAIR, SKIN, TEETH, GLASSES = range(6)
ALL_KNOWN = (1 << len(CLASSES)) - 1
INST_IGNORE_BIT = 6
VALID_BIT = 7
SETS = ("celebamask", "figaro1k", "lfw_hair", "camvid", "pennfudan")

# CelebAMask-HQ ids
CELEBA_SKIN_IDS = (1, 2, 8, 9, 17)  # face skin, nose, ears, neck (the face-skin definition)
CELEBA_HAIR, CELEBA_GLASSES, CELEBA_MOUTH, CELEBA_CLOTH = 13, 3, 10, 18
# CamVid SegNet ids
CAMVID_SKY, CAMVID_PED, CAMVID_BICYCLIST, CAMVID_UNLABELLED = 0, 9, 10, 11

VAL_PERCENT = 15


def default_data_dir() -> Path:
    """``$CAMPIPE_SHARED_DATA`` or ``../shared/data`` relative to the repository root."""
    env = os.environ.get("CAMPIPE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def is_val(set_name: str, stem: str, percent: int = VAL_PERCENT) -> bool:
    """Deterministic split: True for the ~``percent`` % of stems that form the validation set."""
    h = int(hashlib.md5(f"{set_name}/{stem}".encode()).hexdigest()[:8], 16)
    return h % 100 < percent


def has_set(data_dir: Path, set_name: str) -> bool:
    """Whether ``data_dir`` holds ``set_name`` as this module reads it (its ``images/`` and ``masks/`` folders)."""
    d = Path(data_dir) / set_name
    return (d / "images").is_dir() and (d / "masks").is_dir()


def list_stems(data_dir: Path, set_name: str, split: str = "all") -> list[str]:
    """Sorted stems of ``set_name`` having both image and mask; ``split`` in {'train', 'val', 'all'}."""
    d = Path(data_dir) / set_name
    if not has_set(data_dir, set_name):
        raise FileNotFoundError(f"data set {set_name!r} not found: expected {d}/images and {d}/masks")
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    masks = {p.stem for p in (d / "masks").glob("*.png")}
    stems = sorted(p.stem for p in (d / "images").iterdir() if p.stem in masks)
    if split == "all":
        return stems
    want_val = split == "val"
    return [s for s in stems if is_val(set_name, s) == want_val]


def read_pair(data_dir: Path, set_name: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Image uint8 (H, W, 3) RGB and raw label uint8 (H, W) of one sample, at the stored resolution."""
    d = Path(data_dir) / set_name
    img_path = next((d / "images").glob(stem + ".*"), None)
    if img_path is None:
        raise FileNotFoundError(f"no image for {set_name}/{stem}")
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    lab = cv2.imread(str(d / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    if img is None or lab is None:
        raise OSError(f"cannot read {set_name}/{stem}")
    if lab.ndim == 3:
        lab = lab[..., 0]
    if lab.shape != img.shape[:2]:
        raise ValueError(f"{set_name}/{stem}: mask {lab.shape} and image {img.shape[:2]} differ in size")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), lab


def _bits(*classes: int) -> int:
    v = 0
    for c in classes:
        v |= 1 << c
    return v


def _pack(sem_bits: np.ndarray, known_bits: np.ndarray, inst: np.ndarray) -> np.ndarray:
    known_bits = known_bits.astype(np.uint8) | np.uint8(1 << VALID_BIT)
    return np.stack([sem_bits.astype(np.uint8), known_bits, inst.astype(np.uint8)], axis=-1)


def map_labels(set_name: str, raw: np.ndarray, image: np.ndarray | None = None,
               teacher: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Map one raw label map of ``set_name`` into the packed ``lab`` (H, W, 3) uint8 and ``inst_known``.

    ``image`` (uint8 RGB, same size) is needed only for Penn-Fudan, whose body skin is derived by :mod:`.skin`.
    ``teacher`` (uint8 person probability x 255, same size; Figaro1k / LFW only) fills their unlabelled person
    channel where it is confident (:func:`.teacher.teacher_person`).
    """
    raw = np.asarray(raw)
    if teacher is not None and set_name not in TEACHER_SETS:
        raise ValueError(f"teacher labels are only used on {', '.join(TEACHER_SETS)} (they label hair only), "
                         f"not on {set_name}")
    h, w = raw.shape
    sem = np.zeros((h, w), np.uint8)
    known = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint8)
    if set_name == "celebamask":
        person = raw != 0
        sem |= np.where(person, _bits(PERSON), 0).astype(np.uint8)
        sem |= np.where(raw == CELEBA_HAIR, _bits(HAIR), 0).astype(np.uint8)
        sem |= np.where(np.isin(raw, CELEBA_SKIN_IDS), _bits(SKIN), 0).astype(np.uint8)
        sem |= np.where(raw == CELEBA_MOUTH, _bits(TEETH), 0).astype(np.uint8)
        sem |= np.where(raw == CELEBA_GLASSES, _bits(GLASSES), 0).astype(np.uint8)
        # everything but sky is labelled; a person pixel is certainly not sky
        known[:] = ALL_KNOWN & ~_bits(SKY)
        known |= np.where(person, _bits(SKY), 0).astype(np.uint8)
        inst[person] = 1
        return _pack(sem, known, inst), True
    if set_name in ("figaro1k", "lfw_hair"):
        hair = raw >= 128
        person, person_known = hair, hair
        if teacher is not None:
            person, person_known = teacher_person(teacher, hair)
        sem |= np.where(hair, _bits(HAIR), 0).astype(np.uint8)
        sem |= np.where(person, _bits(PERSON), 0).astype(np.uint8)
        known[:] = _bits(HAIR)
        known |= np.where(person_known, _bits(PERSON), 0).astype(np.uint8)
        known |= np.where(person, _bits(SKY), 0).astype(np.uint8)  # hair and people are not sky
        return _pack(sem, known, inst), False
    if set_name == "camvid":
        valid = raw != CAMVID_UNLABELLED
        ped = raw == CAMVID_PED
        bike = raw == CAMVID_BICYCLIST
        sem |= np.where(raw == CAMVID_SKY, _bits(SKY), 0).astype(np.uint8)
        sem |= np.where(ped, _bits(PERSON), 0).astype(np.uint8)
        known |= np.where(valid, _bits(SKY), 0).astype(np.uint8)
        known |= np.where(valid & ~bike, _bits(PERSON), 0).astype(np.uint8)
        known |= np.where(valid & ~bike & ~ped, _bits(HAIR, SKIN, TEETH, GLASSES), 0).astype(np.uint8)
        # pedestrians are labelled semantically only: instances are complete only when there are none
        inst_known = not bool((ped | bike).any())
        return _pack(sem, known, inst), inst_known
    if set_name == "pennfudan":
        from .skin import derive_body_skin

        person = raw > 0
        sem |= np.where(person, _bits(PERSON), 0).astype(np.uint8)
        known[:] = _bits(PERSON)
        known |= np.where(~person, _bits(HAIR, SKIN, TEETH, GLASSES), 0).astype(np.uint8)
        known |= np.where(person, _bits(SKY), 0).astype(np.uint8)
        if image is not None:
            skin_lab = derive_body_skin(image, person)
            sem |= np.where(skin_lab == 1, _bits(SKIN), 0).astype(np.uint8)
            known |= np.where(skin_lab != 255, _bits(SKIN), 0).astype(np.uint8)
        inst = np.minimum(raw, 255).astype(np.uint8)
        return _pack(sem, known, inst), True
    raise ValueError(f"unknown data set {set_name!r}; known sets: {', '.join(SETS)}")


def hair_absent_below_head(lab: np.ndarray, frac: float = 0.35) -> np.ndarray:
    """``lab`` (H, W, 3) packed labels with hair known *absent* on every person instance's pixels below the top
    ``frac`` of that instance's height, where hair was unknown (labelled hair is never touched).

    Why: Penn-Fudan (and the pasted Penn-Fudan people of :mod:`.synth`) label persons, not parts, so their hair is
    unknown on the whole body and nothing tells a hair fit that clothes are not hair; a hair branch fitted without
    it painted dark dresses and trousers as hair (MODEL_CARD.md, thirteenth session, rule 13). Upright pedestrians
    carry their hair in the top ~20-30 % of their height (head ~13 %, shoulder-length hair ~20 %), so the default
    0.35 leaves long hair unknown. Returns a new array; instances are the ids in ``lab[..., 2]`` (0 = none).
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac must be in (0, 1], got {frac}")
    inst = lab[..., 2]
    hair_known = (lab[..., 1] >> HAIR) & 1
    below = np.zeros(inst.shape, bool)
    rows = np.arange(inst.shape[0])[:, None]
    for i in np.unique(inst[inst > 0]):
        m = inst == i
        r = np.flatnonzero(m.any(1))
        top, height = r[0], r[-1] - r[0] + 1
        below |= m & (rows >= top + frac * height)
    out = lab.copy()
    out[..., 1] |= np.where(below & (hair_known == 0), np.uint8(_bits(HAIR)), np.uint8(0))
    return out


def sky_absent_on_portraits(lab: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """CelebAMask ``lab`` (H, W, 3) packed labels with sky known *absent* on the whole frame (its labels leave the
    background's sky unknown); ``image`` is not read. Returns a new array.

    Why: a sky branch fitted with dusk-re-lit street frames (MODEL_CARD.md, fourteenth session, rule 16) called
    dark-blue backdrops, clothes and a flag sky, since only the people of the portrait sets were known "not sky".
    The backgrounds of CelebAMask's face close-ups are studio backdrops, walls and rooms far more often than sky (the
    shipped model calls 0.17 % of those frames sky), so this is a deliberate, slightly noisy negative.
    """
    out = lab.copy()
    out[..., 0] &= np.uint8(~_bits(SKY) & 0xFF)
    out[..., 1] |= np.uint8(_bits(SKY))
    return out


def bare_skin(image: np.ndarray, person: np.ndarray, face_skin: np.ndarray) -> np.ndarray:
    """Bool (H, W): the pixels outside ``person`` (bool) that a per-photo skin-colour model (:mod:`.skin`, fitted on
    ``face_skin``, bool: the labelled face and neck skin) calls skin, in connected regions touching ``person`` (within
    2 pixels): on CelebAMask, whose labels call bare shoulders and chest background, probably bare body skin. All
    False when ``face_skin`` is too small to fit the model. ``image``: the photo, uint8 RGB (H, W, 3)."""
    from .skin import apply_skin_model, fit_skin_model

    bare = apply_skin_model(image, fit_skin_model(image, face_skin), ~person) == 1
    if not bare.any():
        return bare
    near = cv2.dilate(person.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    _, comp = cv2.connectedComponents(bare.astype(np.uint8), connectivity=8)
    touching = np.unique(comp[bare & near])
    return np.isin(comp, touching[touching > 0])


def unknown_on_bare_skin(lab: np.ndarray, image: np.ndarray, classes: tuple[str, ...] = ("person",)) -> np.ndarray:
    """CelebAMask ``lab`` (H, W, 3) packed labels with ``classes`` (names among person and skin) made *unknown* on
    its probable bare body skin (:func:`bare_skin` of the labelled person and face skin). ``image``: the photo,
    uint8 RGB (H, W, 3).

    Why: CelebAMask labels face, neck, hair and clothes as the person and face and neck as skin, but bare shoulders
    and chest as background, so a fit that reads its labels learns to cut bare skin out of people (about a fifth of
    the background the shipped model calls person is such skin: ``benchmarks/seg_diagnostics.py person-errors``,
    MODEL_CARD.md, eighth session) and to call bare body skin "not skin", against the skin channel's definition (all
    visible skin). Unknown, not "person"/"skin": the colour model cannot tell bare skin from a skin-coloured
    backdrop. Photos with too little labelled skin to fit the model are returned unchanged (a copy). Returns a new
    array.
    """
    bad = [c for c in classes if c not in ("person", "skin")]
    if bad or not classes:
        raise ValueError(f"classes must be among ('person', 'skin'), got {classes}")
    u = unpack(lab)
    out = lab.copy()
    bare = bare_skin(image, u["sem"][PERSON] == 1, u["sem"][SKIN] == 1)
    if bare.any():
        bits = np.uint8(~_bits(*(CLASSES.index(c) for c in classes)) & 0xFF)
        out[..., 1] &= np.where(bare, bits, np.uint8(0xFF))
    return out


def unpack(lab: np.ndarray) -> dict[str, np.ndarray]:
    """Packed ``lab`` (..., H, W, 3) -> dict of uint8 arrays: sem (C, ..., H, W) 0/1, known (C, ..., H, W) 0/1
    (class axis first), valid (..., H, W), inst_ignore (..., H, W), inst (..., H, W)."""
    s, k = lab[..., 0], lab[..., 1]
    shifts = np.arange(len(CLASSES), dtype=np.uint8).reshape((-1,) + (1,) * s.ndim)
    return {
        "sem": (s[None] >> shifts) & 1,
        "known": (k[None] >> shifts) & 1,
        "valid": (k >> VALID_BIT) & 1,
        "inst_ignore": (k >> INST_IGNORE_BIT) & 1,
        "inst": lab[..., 2],
    }


@dataclass
class Record:
    """One cached sample (see module docstring for ``lab``)."""

    set_name: str
    stem: str
    image: np.ndarray
    lab: np.ndarray
    inst_known: bool


def downscale_pair(img: np.ndarray, raw: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (INTER_AREA) and raw label map (nearest) downscaled so the long side is at most ``max_side``."""
    h, w = raw.shape
    s = max_side / max(h, w)
    if s < 1:
        nh, nw = round(h * s), round(w * s)
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        raw = cv2.resize(raw, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return img, raw


def _load_record(data_dir: Path, set_name: str, stem: str, max_side: int, teacher_dir: Path | None = None
                 ) -> Record:
    img, raw = downscale_pair(*read_pair(data_dir, set_name, stem), max_side)  # once, for the in-memory cache
    teacher = None
    if teacher_dir is not None:
        teacher = read_teacher(teacher_dir, set_name, stem, raw.shape)
    lab, ik = map_labels(set_name, raw, img, teacher)
    return Record(set_name, stem, img, lab, ik)


def load_set(data_dir: Path, set_name: str, split: str, max_side: int = 384, threads: int = 2,
             limit: int | None = None, teacher_dir: Path | None = None) -> list[Record]:
    """Load (and map) every sample of one set/split, images downscaled to ``max_side`` on the long side.

    ``teacher_dir``: stored teacher person maps (:mod:`.teacher`), used on the sets in ``TEACHER_SETS`` only.
    """
    stems = list_stems(data_dir, set_name, split)
    if limit is not None:
        stems = stems[:limit]
    tdir = Path(teacher_dir) if teacher_dir is not None and set_name in TEACHER_SETS else None
    with ThreadPoolExecutor(max(1, threads)) as ex:
        return list(ex.map(lambda s: _load_record(data_dir, set_name, s, max_side, tdir), stems))


def load_cached(data_dir: Path, set_name: str, split: str, max_side: int, cache_dir: Path | None,
                threads: int = 2, teacher_dir: Path | None = None) -> list[Record]:
    """:func:`load_set` with an on-disk ``.npz`` cache (outside the repository) keyed by set, split, size and
    whether teacher labels were used."""
    teacher_dir = teacher_dir if set_name in TEACHER_SETS else None
    if cache_dir is None:
        return load_set(data_dir, set_name, split, max_side, threads, teacher_dir=teacher_dir)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if teacher_dir is None else "_teacher"
    f = cache_dir / f"{set_name}_{split}_{max_side}_v1{tag}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=False)
        n = int(z["n"])
        return [Record(set_name, str(z["stems"][i]), z[f"img{i}"], z[f"lab{i}"], bool(z["ik"][i])) for i in range(n)]
    recs = load_set(data_dir, set_name, split, max_side, threads, teacher_dir=teacher_dir)
    arrays = {"n": np.int64(len(recs)), "stems": np.array([r.stem for r in recs]),
              "ik": np.array([r.inst_known for r in recs], bool)}
    for i, r in enumerate(recs):
        arrays[f"img{i}"] = r.image
        arrays[f"lab{i}"] = r.lab
    tmp = f.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, f)
    return recs
