"""Pack the training split of ``../shared/data`` small enough to travel to a rented GPU machine.

Each image is downscaled once to ``max_side`` on the long side (INTER_AREA; labels nearest), exactly the size the
training cache uses (``data.cache_max_side``), and written as WebP (lossy, ``quality``) with its 8-bit label PNG, in
the same ``SET/images`` + ``SET/masks`` layout, so the packed folder is a drop-in ``--data`` directory. Only the
training split is written (validation images never leave this machine; evaluate here). ``--every K`` keeps every
K-th stem of the sets named by ``--thin`` (LFW, the largest and lowest-weighted set, by default).

    python -m campipe.segmentation.training.pack_data .gpudata/data            # ~40 MB for the five sets

With ``--teacher DIR`` (the stored teacher person maps of :mod:`.teacher`) the maps of the hair-only sets travel too,
at the same size, under ``OUT/teacher/SET/STEM.png``: set ``data.teacher_dir = "OUT/teacher"`` in the device config.

Never commit the output: the sets are licensed for research use only (see ``../shared/data/README.md``).
"""
from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

from .datasets import SETS, default_data_dir, downscale_pair, list_stems, read_pair
from .teacher import TEACHER_SETS, read_teacher, teacher_path


def pack_one(src: Path, dst: Path, set_name: str, stem: str, max_side: int, quality: int,
             teacher_dir: Path | None = None) -> int:
    img, raw = downscale_pair(*read_pair(src, set_name, stem), max_side)
    extra = 0
    if teacher_dir is not None and set_name in TEACHER_SETS:
        ok, t = cv2.imencode(".png", read_teacher(teacher_dir, set_name, stem, raw.shape),
                             [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError(f"cannot encode the teacher map of {set_name}/{stem}")
        out = teacher_path(dst / "teacher", set_name, stem)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(t.tobytes())
        extra = len(t)
    (dst / set_name / "images").mkdir(parents=True, exist_ok=True)
    (dst / set_name / "masks").mkdir(parents=True, exist_ok=True)
    ok1, a = cv2.imencode(".webp", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    ok2, b = cv2.imencode(".png", raw, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not (ok1 and ok2):
        raise OSError(f"cannot encode {set_name}/{stem}")
    (dst / set_name / "images" / f"{stem}.webp").write_bytes(a.tobytes())
    (dst / set_name / "masks" / f"{stem}.png").write_bytes(b.tobytes())
    return len(a) + len(b) + extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--max-side", type=int, default=384)
    ap.add_argument("--quality", type=int, default=82)
    ap.add_argument("--thin", default="lfw_hair")
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", type=Path, default=None, help="teacher maps to pack too (teacher.py predict --out)")
    a = ap.parse_args(argv)
    src = a.data or default_data_dir()
    thin = set(filter(None, a.thin.split(",")))
    total = 0
    with ThreadPoolExecutor(max(1, a.threads)) as ex:
        for s in SETS:
            stems = list_stems(src, s, "train")
            if s in thin:
                stems = stems[::max(1, a.every)]
            n = sum(ex.map(lambda st: pack_one(src, a.out, s, st, a.max_side, a.quality, a.teacher), stems))
            total += n
            print(f"{s}: {len(stems)} images, {n / 1e6:.1f} MB")
    print(f"total {total / 1e6:.1f} MB in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
