"""Teacher pseudo-labels for *person* on the sets that do not label it (Figaro1k, LFW hair): MediaPipe selfie
segmentation, for training data only (campipe never runs MediaPipe at run time; it is not a campipe dependency).

Figaro1k and LFW label hair alone, so their person channel is unknown except on hair pixels; ~44 % of the training
photos then never teach the person channel. A teacher fills that in where it is confident:

1. **predict** (in any environment with ``mediapipe==0.10.14``, which ships the selfie-segmentation model inside its
   wheel; this step imports nothing of campipe, so run the file by its path)::

       python -m venv /work/mpvenv && /work/mpvenv/bin/pip install mediapipe==0.10.14
       /work/mpvenv/bin/python segmentation/training/teacher.py predict --data ../shared/data \\
           --out /work/ckpt/teacher --set figaro1k --set lfw_hair --set celebamask --set pennfudan

   writes ``OUT/<set>/<stem>.png``: uint8 person probability x 255 at the image's size, for every image of the set
   (both splits; validation images are only used to *measure* the teacher, never for training);
2. **score** (campipe's environment): ``python -m campipe.segmentation.training.teacher score --data ../shared/data
   --teacher /work/ckpt/teacher`` prints the teacher's pooled person IoU on the validation split of the sets that
   label person (CelebAMask portraits: the kind of photo it labels on Figaro/LFW; Penn-Fudan full bodies);
3. **use**: ``[data] teacher_dir = "/work/ckpt/teacher"`` in a training config. On Figaro1k/LFW, :func:`teacher_person`
   then marks person where the teacher's probability is >= :data:`TEACHER_HI`, not-person where it is
   <= :data:`TEACHER_LO` (and never on hair, which is always person), unknown in between (no loss). Labelled sets are
   never overwritten.

References: MediaPipe Selfie Segmentation (Google, 2021; model card "Selfie Segmentation", Apache-2.0 code and model);
the issue's "optional teachers for pseudo-labels where labels are missing".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

#: sets whose person channel the teacher may fill (they label hair only)
TEACHER_SETS = ("figaro1k", "lfw_hair")
#: confident-person / confident-background thresholds on the teacher's probability
TEACHER_HI = 0.8
TEACHER_LO = 0.2
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def teacher_person(prob_u8: np.ndarray, hair: np.ndarray, hi: float = TEACHER_HI, lo: float = TEACHER_LO
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Teacher probability (uint8, x255) and the labelled hair (bool), same (H, W) -> (person, known) bool maps.

    person = confident teacher person or hair; known = person or confident background (not on hair).
    """
    if prob_u8.shape != hair.shape:
        raise ValueError(f"teacher map {prob_u8.shape} and label {hair.shape} differ in size")
    p = prob_u8.astype(np.float32) * (1.0 / 255.0)
    person = (p >= hi) | hair
    known = person | (p <= lo)
    return person, known


def teacher_path(teacher_dir: str | Path, set_name: str, stem: str) -> Path:
    return Path(teacher_dir) / set_name / f"{stem}.png"


def read_teacher(teacher_dir: str | Path, set_name: str, stem: str, hw: tuple[int, int]) -> np.ndarray:
    """The stored teacher map of one image as uint8 (H, W) at ``hw`` (INTER_AREA / linear resize if needed)."""
    import cv2

    p = teacher_path(teacher_dir, set_name, stem)
    m = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise FileNotFoundError(f"teacher label missing: {p} (run `python segmentation/training/teacher.py predict "
                                f"--set {set_name} ...` with mediapipe installed, or unset data.teacher_dir)")
    if m.shape != tuple(hw):
        shrink = m.shape[0] > hw[0]
        m = cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return m


def predict(data_dir: Path, out_dir: Path, sets: list[str], model_selection: int = 0) -> int:
    """Run MediaPipe selfie segmentation on every image of ``sets``; returns the number of maps written."""
    try:
        import mediapipe as mp
    except ImportError:
        raise SystemExit("teacher.py predict needs mediapipe (pip install mediapipe==0.10.14, e.g. in its own venv)")
    import cv2

    seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model_selection)
    n = 0
    for s in sets:
        src = data_dir / s / "images"
        if not src.is_dir():
            raise SystemExit(f"no images folder: {src}")
        dst = out_dir / s
        dst.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for i, f in enumerate(files):
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                print(f"  skipped unreadable {f}", file=sys.stderr)
                continue
            mask = seg.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).segmentation_mask
            u8 = np.clip(np.asarray(mask, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            tmp = dst / f".{f.stem}.tmp.png"
            cv2.imwrite(str(tmp), u8)
            tmp.replace(dst / f"{f.stem}.png")
            n += 1
            if (i + 1) % 200 == 0 or i + 1 == len(files):
                print(f"  {s}: {i + 1}/{len(files)}", flush=True)
    return n


def score(data_dir: Path, teacher_dir: Path, sets=("celebamask", "pennfudan"), split: str = "val") -> dict:
    """Pooled person IoU (at 0.5) of the stored teacher maps against the labels of ``sets`` on ``split``."""
    from campipe.segmentation.training.datasets import list_stems, read_pair
    from campipe.segmentation.training.evaluate import EVAL_SPEC, IoUAccumulator

    out = {}
    for s in sets:
        acc = IoUAccumulator()
        pos, ign, _ = EVAL_SPEC[s]["person"]
        stems = list_stems(data_dir, s, split)
        for stem in stems:
            _, raw = read_pair(data_dir, s, stem)
            t = read_teacher(teacher_dir, s, stem, raw.shape)
            acc.update(t >= 128, pos(raw), None if ign is None else ign(raw))
        out[s] = {"iou_person": acc.iou, "n_images": len(stems)}
    return out


def coverage(data_dir: Path, teacher_dir: Path, sets=TEACHER_SETS, split: str = "train") -> dict:
    """Fraction of pixels whose person label is known without / with the teacher on ``sets`` (training split)."""
    from campipe.segmentation.training.datasets import list_stems, read_pair

    out = {}
    for s in sets:
        n_px = known_before = known_after = person_after = 0
        for stem in list_stems(data_dir, s, split):
            _, raw = read_pair(data_dir, s, stem)
            hair = raw >= 128
            person, known = teacher_person(read_teacher(teacher_dir, s, stem, raw.shape), hair)
            n_px += raw.size
            known_before += int(hair.sum())
            known_after += int(known.sum())
            person_after += int(person.sum())
        out[s] = {"known_before": known_before / max(n_px, 1), "known_after": known_after / max(n_px, 1),
                  "person_after": person_after / max(n_px, 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="write teacher person maps (needs mediapipe)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--set", dest="sets", action="append", required=True)
    p.add_argument("--model", type=int, default=0, choices=(0, 1), help="0 general (256x256), 1 landscape")
    q = sub.add_parser("score", help="teacher person IoU on labelled validation sets, and label coverage")
    q.add_argument("--data", required=True, type=Path)
    q.add_argument("--teacher", required=True, type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "predict":
        n = predict(a.data, a.out, a.sets, a.model)
        print(f"wrote {n} teacher maps under {a.out}")
        return 0
    for s, r in score(a.data, a.teacher).items():
        print(f"teacher person IoU on {s} val: {r['iou_person']:.3f} ({r['n_images']} images)")
    for s, r in coverage(a.data, a.teacher).items():
        print(f"{s} train: person known on {100 * r['known_before']:.1f} % of pixels without the teacher, "
              f"{100 * r['known_after']:.1f} % with it ({100 * r['person_after']:.1f} % person)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
