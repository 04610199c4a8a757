"""Regenerate the golden render used by tests/test_cli_golden.py (run only after a deliberate rendering change,
and say why in the commit): python tests/golden/make_golden.py"""
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

import campipe

HERE = Path(__file__).parent
SAMPLE = HERE.parents[1] / "samples" / "astronaut_5d4_iso200.dng"


def golden_render() -> np.ndarray:
    """The 'basic' style (no network) render of the astronaut sample, area-downsampled to 256x256, uint8 sRGB."""
    res = campipe.process(SAMPLE, style="basic", sets=["dither.amount=0"])
    small = cv2.resize(res.image, (256, 256), interpolation=cv2.INTER_AREA)
    return np.clip(small * 255 + 0.5, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    Image.fromarray(golden_render()).save(HERE / "astronaut_basic_256.png")
    print("wrote", HERE / "astronaut_basic_256.png")
