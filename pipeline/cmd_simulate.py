"""``campipe simulate``: turn an sRGB photo into the DNG a real camera would have recorded (sensor simulator CLI).

    campipe simulate IN.jpg -o OUT.dng --iso 800 --camera sony-a7m3 [--illuminant D65|A|D50|...] [--seed 0]

The input (JPEG/PNG/TIFF/HEIC, 8 or 16 bit) is read with Pillow (tifffile for 16-bit TIFF), rotated by its EXIF
orientation and converted to sRGB when it embeds another ICC profile (Pillow ImageCms); then
:func:`campipe.simulate.simulate_raw` and :func:`campipe.dng.write_dng` do the work.

Exit codes: 0 written, 1 the input could not be read / the output exists, 2 usage error (unknown camera, ...).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import typer

from .cameras import CAMERAS, LIGHT_SOURCE_CODES, get_camera


def read_srgb(path: Path) -> np.ndarray:
    """Read an image as sRGB: uint8 (H, W, 3), or float32 in [0, 1] for 16-bit sources. ValueError if unreadable."""
    from PIL import Image, ImageCms, ImageOps

    try:
        import pillow_heif  # noqa: F401  (registers HEIC/AVIF with Pillow)
        pillow_heif.register_heif_opener()
    except Exception:  # pragma: no cover - optional
        pass
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            arr = tifffile.imread(path)
        except Exception as e:
            raise ValueError(f"cannot read {path}: {e}") from e
        if arr.ndim == 3 and arr.shape[2] >= 3 and arr.dtype == np.uint16:
            return (arr[..., :3].astype(np.float32) / 65535.0)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            icc = im.info.get("icc_profile")
            im = im.convert("RGB")
            if icc:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                desc = ImageCms.getProfileDescription(src).lower()
                if "srgb" not in desc:
                    im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from e


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        input: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                     help="sRGB image (JPEG, PNG, TIFF, HEIC)."),
        output: Path = typer.Option(..., "-o", "--output", help="DNG file to write."),
        iso: int = typer.Option(800, "--iso", min=25, max=409600, help="ISO speed (sets the noise level)."),
        camera: str = typer.Option("sony-a7m3", "--camera",
                                   help=f"Camera model: {', '.join(CAMERAS)} (or its model name)."),
        illuminant: str = typer.Option("D65", "--illuminant",
                                       help=f"Scene illuminant: {', '.join(LIGHT_SOURCE_CODES)}."),
        seed: int = typer.Option(0, "--seed", help="Noise seed (same seed, same file)."),
        white_fraction: float = typer.Option(0.8, "--white-fraction", min=0.05, max=1.0,
                                             help="Sensor level of the photo's white (headroom; BaselineExposure)."),
        f_number: float = typer.Option(5.6, "--f-number", min=0.5, help="EXIF FNumber."),
        focal_length: float = typer.Option(50.0, "--focal-length", min=1.0, help="EXIF FocalLength (mm)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    ) -> None:
        """Simulate a camera's raw capture of an sRGB photo and write it as a DNG."""
        from datetime import datetime

        from .dng import write_dng
        from .simulate import illuminant_xyz, simulate_raw

        try:
            cam = get_camera(camera)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--camera")
        try:
            illuminant_xyz(illuminant)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--illuminant")
        if output.suffix.lower() != ".dng":
            raise typer.BadParameter(f"output must end in .dng, got {output.name!r}", param_hint="-o")
        if output.resolve() == input.resolve():
            raise typer.BadParameter("the output cannot be the input", param_hint="-o")
        if output.exists() and not overwrite:
            typer.echo(f"campipe simulate: {output} exists (use --overwrite)", err=True)
            raise typer.Exit(1)
        try:
            img = read_srgb(input)
        except ValueError as e:
            typer.echo(f"campipe simulate: {e}", err=True)
            raise typer.Exit(1)
        sim = simulate_raw(img, cam, iso=iso, illuminant=illuminant, seed=seed, white_fraction=white_fraction,
                           f_number=f_number, focal_length=focal_length,
                           datetime=datetime.now().strftime("%Y:%m:%d %H:%M:%S"))
        write_dng(output, sim, overwrite=overwrite)
        s, o = sim.noise_profile
        h, w = sim.cfa.shape
        typer.echo(f"wrote {output} ({w}x{h}, {cam.unique_model}, ISO {iso}, {sim.illuminant}, "
                   f"NoiseProfile S={s:.3g} O={o:.3g})")
