#!/usr/bin/env python3
"""Makes the Pillow reference crops that tests/ingest_pixels.rs checks ingest against.

For each source image in tests/fixtures/pillow/src/ it does what a PyTorch user's
preprocessing does: Pillow opens it (whatever its extension), converts to RGB, resizes
the shorter side to S with Image.BILINEAR (longer side int(S*long/short), as torchvision's
Resize(int)), and keeps the centre SxS crop at offset floor((resized-S)/2). The crop is
saved losslessly as tests/fixtures/pillow/golden/<name>.png.

The sources (tests/fixtures/pillow/src/) were copied from `pipeline sample` trees
(`pipeline sample --out X --train-per-class 3 --val-per-class 1`, and for the large one
`--min-side 1500 --max-side 2000`), one per case ingest must get right:

  colour_landscape.JPEG    baseline RGB 4:4:4, 518x390       (train/n03450230/n03450230_26)
  colour_portrait.JPEG     baseline RGB 4:4:4, 438x527       (val/n02769748/ILSVRC2012_val_00000007)
  colour_progressive.JPEG  progressive (SOF2) RGB, 612x479   (train/n02769748/n02769748_36)
  gray.JPEG                baseline 1-component, 511x458     (train/n04370456/n04370456_6)
  gray_progressive.JPEG    progressive 1-component, 427x461  (train/n03124043/n03124043_12)
  cmyk.JPEG                Adobe YCCK (inverted CMYK), 363x374 (train/n04479046/n04479046_20)
  png_named.JPEG           PNG bytes under a .JPEG name, L   (train/n03595614/n03595614_2)
  large_colour.JPEG        baseline RGB, 1737x2265: a 6.8x downscale (large render, val/n04133789/..._5)
and ../truncated.JPEG is the sample's planted truncated file (train/n04120489/n04120489_7),
used by the test as a must-reject case (no golden).

Two sources are derived here (`--derive` writes them if missing; committed thereafter):
  colour_420.JPEG   colour_portrait re-encoded by Pillow at quality 90 with 4:2:0 chroma
                    subsampling, ImageNet's usual layout (the sample's JPEGs are all 4:4:4).
  zone_plate.JPEG   a synthetic colour zone plate (531x397, 4:2:0): the sample's images are
                    smooth upscales on which even nearest-neighbour or a one-pixel crop shift
                    stays within the bound; on this one a shift costs ~32, a wrong filter 4-15.

usage: python3 benches/make_pillow_goldens.py [--derive] [S]      (S defaults to 256)
"""
import pathlib
import sys

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pillow"


def centre_crop(path, size):
    img = Image.open(path)
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, int(size * h / w))
    else:
        nw, nh = max(size, int(size * w / h)), size
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def derive(src):
    """Writes the derived sources named in the module doc, if they are missing."""
    c420 = src / "colour_420.JPEG"
    if not c420.exists():
        Image.open(src / "colour_portrait.JPEG").save(c420, quality=90, subsampling=2)
    zone = src / "zone_plate.JPEG"
    if not zone.exists():
        w, h = 531, 397
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        r2 = (x - w / 2) ** 2 + (y - h / 2) ** 2
        k = np.pi / (1.6 * max(w, h))  # local frequency rises to ~0.3 cycles/px at the rim
        rgb = [127.5 + 127.5 * np.cos(k * r2 + phase) for phase in (0.0, 2.1, 4.2)]
        pixels = np.clip(np.stack(rgb, -1), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(zone, quality=92, subsampling=2)


def main():
    args = sys.argv[1:]
    if "--derive" in args:
        args.remove("--derive")
        derive(ROOT / "src")
    size = int(args[0]) if args else 256
    out = ROOT / "golden"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "src").iterdir()):
        crop = centre_crop(src, size)
        crop.save(out / (src.stem + ".png"))
        print(f"{src.name}: mode {Image.open(src).mode}, {Image.open(src).size} -> {out / (src.stem + '.png')}")


if __name__ == "__main__":
    main()
