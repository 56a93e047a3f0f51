#!/usr/bin/env python3
"""Cut the bundled Fashion-MNIST subset that `pipeline sample` renders from.

One-off and deterministic: run it again and the four .gz files come out byte-identical
(gzip header mtime is pinned to 0 and no file name is stored in it).

What it keeps:
  train: the FIRST 600 images of each class, in file order, from train-*-ubyte.gz (6000)
  val:   the FIRST 100 images of each class, in file order, from t10k-*-ubyte.gz  (1000)
Images keep their original relative order, so classes stay interleaved as upstream.

Output: standard IDX files (same magic numbers and header layout as the originals:
images 0x00000803 N 28 28, labels 0x00000801 N), gzip'd, next to this script:
  train-images.gz train-labels.gz val-images.gz val-labels.gz

Source: Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), MIT licence,
Copyright 2017 Zalando SE; see LICENSE beside this script.

Usage: python3 make_subset.py [SOURCE_DIR]
"""

import gzip
import struct
import sys
from pathlib import Path

IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions
LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension
NUM_CLASSES = 10
ROWS = COLS = 28

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def read_idx_images(path):
    data = gzip.open(path, "rb").read()
    magic, count, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != IMAGES_MAGIC or (rows, cols) != (ROWS, COLS):
        sys.exit(f"{path}: not a 28x28 IDX image file (magic {magic:#010x}, {rows}x{cols})")
    pixels = data[16:]
    if len(pixels) != count * rows * cols:
        sys.exit(f"{path}: header says {count} images but holds {len(pixels)} pixel bytes")
    size = rows * cols
    return [pixels[i * size:(i + 1) * size] for i in range(count)]


def read_idx_labels(path):
    data = gzip.open(path, "rb").read()
    magic, count = struct.unpack(">II", data[:8])
    if magic != LABELS_MAGIC or len(data) - 8 != count:
        sys.exit(f"{path}: not an IDX label file of {count} labels (magic {magic:#010x})")
    return data[8:]


def first_per_class(images, labels, per_class):
    """Walk the file in order and keep an image while its class is still short."""
    kept_images, kept_labels = [], bytearray()
    taken = [0] * NUM_CLASSES
    for image, label in zip(images, labels):
        if taken[label] < per_class:
            taken[label] += 1
            kept_images.append(image)
            kept_labels.append(label)
    if taken != [per_class] * NUM_CLASSES:
        sys.exit(f"source has too few images for {per_class} per class: {taken}")
    return kept_images, bytes(kept_labels)


def write_gzip(path, payload):
    # mtime=0 and an empty stored name keep the output byte-identical across runs.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            gz.write(payload)


def write_split(name, images, labels):
    header = struct.pack(">IIII", IMAGES_MAGIC, len(images), ROWS, COLS)
    write_gzip(HERE / f"{name}-images.gz", header + b"".join(images))
    write_gzip(HERE / f"{name}-labels.gz", struct.pack(">II", LABELS_MAGIC, len(labels)) + labels)
    print(f"{name}: {len(images)} images")


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    splits = [("train", "train", 600), ("val", "t10k", 100)]
    for name, upstream, per_class in splits:
        images = read_idx_images(source / f"{upstream}-images-idx3-ubyte.gz")
        labels = read_idx_labels(source / f"{upstream}-labels-idx1-ubyte.gz")
        write_split(name, *first_per_class(images, labels, per_class))


if __name__ == "__main__":
    main()
