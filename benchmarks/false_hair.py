"""False hair on Penn-Fudan validation photos: share of the pixels known *not* hair (background, and each person's
body below the top 35 % of its height, datasets.hair_absent_below_head) that campipe's whole protocol calls hair
(>= 0.5), pooled over the photos; also hair >= 0.5 share of the frame on the three raw samples (campipe's render).
python benchmarks/false_hair.py W1.pt [W2.pt ...] (run from the repository root, ../shared/data present; about 15 s per
weights file). Written for MODEL_CARD.md's rule 14 (thirteenth session); one-off in shape, kept for reproducing it."""
import sys
import numpy as np
from pathlib import Path
from campipe.segmentation.checkpoint import load_checkpoint, IMAGENET_MEAN, IMAGENET_STD
from campipe.segmentation.training.evaluate import predict
from campipe.segmentation.training.datasets import list_stems, read_pair, map_labels, unpack, hair_absent_below_head, HAIR
from campipe.decode import decode_file
from campipe.segment_stage import frame_render
from campipe.sidebyside import to_uint8
data = Path("../shared/data")
stems = list_stems(data, "pennfudan", "val")
for w in sys.argv[1:]:
    m = load_checkpoint(w)[0].eval(); c = m.cfg
    def hair(img):
        return predict(m, img, c.input_size, IMAGENET_MEAN, IMAGENET_STD, tuple(c.semantic_classes), c.mask_stride)[0]["hair"] >= 0.5
    fp = n = fp_body = n_body = 0
    for t in stems:
        img, raw = read_pair(data, "pennfudan", t)
        lab = hair_absent_below_head(map_labels("pennfudan", raw, img)[0])
        u = unpack(lab); known_no = (u["known"][HAIR] == 1) & (u["sem"][HAIR] == 0)
        h = hair(img); body = known_no & (raw > 0)
        fp += (h & known_no).sum(); n += known_no.sum(); fp_body += (h & body).sum(); n_body += body.sum()
    out = [f"PF val ({len(stems)}) false hair {100*fp/n:.2f} % of known-not-hair pixels, {100*fp_body/n_body:.2f} % of the bodies below the head line"]
    for name in ["astronaut_5d4_iso200.dng", "astronaut_d850_iso3200_tungsten.dng", "rocket_a7m3_iso800.dng"]:
        u8 = to_uint8(frame_render(decode_file(Path("samples") / name))[0])
        out.append(f"{name[:14]} {100*hair(u8).mean():.2f} %")
    print(w, "|", "; ".join(out), flush=True)
