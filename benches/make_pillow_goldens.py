#!/usr/bin/env python3
"""Makes the Pillow reference crops that tests/ingest_pixels.rs checks ingest against.

For each source image in tests/fixtures/pillow/src/ it does what a PyTorch user's
preprocessing does: Pillow opens it (whatever its extension), converts to RGB, resizes
the shorter side to S with Image.BILINEAR (longer side int(S*long/short), as torchvision's
Resize(int)), and keeps the centre SxS crop at offset floor((resized-S)/2). The crop is
saved losslessly as tests/fixtures/pillow/golden/<name>.png.

usage: python3 benches/make_pillow_goldens.py [S]      (S defaults to 256)
"""
import pathlib
import sys

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


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    out = ROOT / "golden"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "src").iterdir()):
        crop = centre_crop(src, size)
        crop.save(out / (src.stem + ".png"))
        print(f"{src.name}: mode {Image.open(src).mode}, {Image.open(src).size} -> {out / (src.stem + '.png')}")


if __name__ == "__main__":
    main()
