#!/usr/bin/env python3
"""The ingest peer: what a Python user would write to do `pipeline ingest`'s work.

Pillow + numpy + pyarrow, one process, the same work as `pipeline ingest` on a
folders-layout tree (SRC/train/<wnid>/*, SRC/val/<wnid>/*):

  list the class folders (class index = sorted wnid order), shuffle the training list
  with a seed (every shard mixes classes), and per image: open (format sniffed by Pillow),
  convert("RGB"), resize the shorter side to S with Image.BILINEAR (longer side
  int(S*long/short), torchvision's Resize(int)), centre SxS crop, skip what fails to
  decode (Pillow refuses truncated files by default) and note the reason; accumulate the
  exact mean image (uint64 sums) and the RGB covariance (float64 X^T X, exact for these
  sums) -> eigen-decomposition; write Parquet shards with the same schema and layout
  (key utf8, label int64, pixels fixed_size_binary(S*S*3); rows per shard / row group
  as given; uncompressed, no dictionary, temp file + rename), mean.npy, dataset.json.

Modes:
  (default)         the full peer as above
  --decode-only     Pillow's floor: Image.open + convert("RGB") (forces the decode) only
  --draft [M]       like the full peer, but lets libjpeg-turbo decode JPEGs at a reduced
                    DCT scale first (Image.draft: 1/2, 1/4, 1/8 while the shorter side
                    stays >= M x S; M defaults to 1) -- measures what DCT-domain
                    downscaling would buy; pixels then differ from the plain path, see
                    --compare-draft
  --compare-draft   no output: for each image, the mean abs diff between the draft path's
                    crop and the plain path's crop (does DCT scaling keep MAD <= 2?)

usage: ingest_peer.py SRC --out DIR [--image-size 256] [--rows-per-shard 1024]
                      [--rows-per-row-group 64] [--seed 0] [--decode-only | --draft | --compare-draft]

Prints one JSON line at the end: {"mode", "images", "skipped", "seconds", "images_per_s",
"cpu_seconds", "images_per_cpu_s", "peak_rss_mb"}.
"""
import argparse
import json
import os
import pathlib
import random
import resource
import sys
import time

import numpy as np
from PIL import Image


def list_split(src, split, class_index):
    """(key, label) for every file under SRC/split/<wnid>/, sorted, key relative to SRC."""
    out = []
    split_dir = src / split
    if not split_dir.is_dir():
        return out
    for wnid in sorted(p.name for p in split_dir.iterdir() if p.is_dir()):
        for f in sorted((split_dir / wnid).iterdir()):
            if f.is_file():
                out.append((f"{split}/{wnid}/{f.name}", class_index[wnid]))
    return out


def resized_size(w, h, size):
    if w <= h:
        return size, max(size, int(size * h / w))
    return max(size, int(size * w / h)), size


def centre_crop(img, size):
    """resize(BILINEAR) shorter side -> size, then the centre size x size crop (uint8 HWC)."""
    w, h = img.size
    nw, nh = resized_size(w, h, size)
    left, top = (nw - size) // 2, (nh - size) // 2
    # Pillow's box= argument resizes only the region the crop needs, exactly as a full
    # resize followed by crop would compute it (what a careful user would do).
    box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    return np.asarray(img)


def load(path, size, draft, margin=1):
    """draft: let libjpeg-turbo scale by 1/2, 1/4 or 1/8 in the DCT domain, as far as
    keeps both sides >= margin x the resize target (shorter side >= margin x S)."""
    with Image.open(path) as img:
        if draft and img.format == "JPEG":
            w, h = img.size
            nw, nh = resized_size(w, h, size)
            img.draft("RGB", (margin * nw, margin * nh))
        return centre_crop(img.convert("RGB"), size)


def symmetric_eigen(cov):
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    for j in range(3):  # sign convention: largest-magnitude component negative
        if vecs[np.argmax(np.abs(vecs[:, j])), j] > 0:
            vecs[:, j] = -vecs[:, j]
    return vals, vecs


class ShardWriter:
    def __init__(self, directory, size, rows_per_group):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq = pa, pq
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.row_bytes = size * size * 3
        self.rows_per_group = rows_per_group
        self.schema = pa.schema(
            [
                pa.field("key", pa.utf8(), nullable=False),
                pa.field("label", pa.int64(), nullable=True),
                pa.field("pixels", pa.binary(self.row_bytes), nullable=False),
            ]
        )

    def write(self, index, keys, labels, pixels):
        pa = self.pa
        n = len(keys)
        pix = pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.row_bytes), n, [None, pa.py_buffer(pixels[:n])])
        table = pa.Table.from_arrays([pa.array(keys, pa.utf8()), pa.array(labels, pa.int64()), pix], schema=self.schema)
        final = self.dir / f"part-{index:05d}.parquet"
        tmp = final.with_suffix(".parquet.tmp")
        self.pq.write_table(
            table, tmp, row_group_size=self.rows_per_group, compression="none", use_dictionary=False,
            write_statistics=["key", "label"],
        )
        os.replace(tmp, final)


def run_split(src, images, size, rows_per_shard, writer, stats, skipped, draft):
    """draft: 0 = plain decode, M >= 1 = DCT-scaled decode keeping the shorter side >= M x S."""
    """Decodes, crops and writes one split shard by shard; returns images done."""
    batch = np.empty((rows_per_shard, size, size, 3), np.uint8)
    done = 0
    for shard, start in enumerate(range(0, len(images), rows_per_shard)):
        keys, labels, n = [], [], 0
        for key, label in images[start : start + rows_per_shard]:
            done += 1
            try:
                crop = load(src / key, size, draft > 0, draft)
            except Exception as e:  # noqa: BLE001 -- any decode failure is a skip with its reason
                skipped.append({"path": key, "reason": str(e)})
                continue
            batch[n] = crop
            keys.append(key)
            labels.append(label)
            if stats is not None:
                stats.add(batch[n])
            n += 1
        writer.write(shard, keys, labels, batch)
    return done


class Stats:
    """Exact sums, like ours: uint64 per-position sums; float64 X^T X (exact: integer
    products far below 2^53 for these counts)."""

    def __init__(self, size):
        self.n = 0
        self.pixel_sums = np.zeros((size, size, 3), np.uint64)
        self.products = np.zeros((3, 3))

    def add(self, crop):
        self.n += 1
        np.add(self.pixel_sums, crop, out=self.pixel_sums, casting="unsafe")
        # X^T X via BLAS. (The channel sums come from pixel_sums at the end: a per-image
        # x.sum(0) over the (S*S, 3) view is numpy's slow strided reduction, ~1 ms.)
        x = crop.reshape(-1, 3).astype(np.float64)
        self.products += x.T @ x

    def finish(self):
        pixels = max(self.n, 1) * self.pixel_sums.shape[0] * self.pixel_sums.shape[1]
        mean_rgb = self.pixel_sums.sum(axis=(0, 1)).astype(np.float64) / pixels
        cov = (self.products / pixels - np.outer(mean_rgb, mean_rgb)) / (255.0 * 255.0)
        vals, vecs = symmetric_eigen(cov)
        mean_image = (self.pixel_sums / max(self.n, 1)).astype(np.float32)
        return mean_image, mean_rgb, vals, vecs


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=pathlib.Path)
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--rows-per-shard", type=int, default=1024)
    ap.add_argument("--rows-per-row-group", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--decode-only", action="store_true")
    mode.add_argument("--draft", type=int, nargs="?", const=1, default=0, metavar="MARGIN")
    mode.add_argument("--compare-draft", action="store_true")
    args = ap.parse_args()
    size, src = args.image_size, args.src

    t0, c0 = time.perf_counter(), time.process_time()
    wnids = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    class_index = {w: i for i, w in enumerate(wnids)}
    train = list_split(src, "train", class_index)
    val = list_split(src, "val", class_index)
    random.Random(args.seed).shuffle(train)
    skipped = []

    if args.decode_only:
        mode_name = "decode-only"
        done = 0
        for key, _ in train + val:
            done += 1
            try:
                with Image.open(src / key) as img:
                    img.convert("RGB")
            except Exception as e:  # noqa: BLE001
                skipped.append({"path": key, "reason": str(e)})
    elif args.compare_draft:
        mode_name = "compare-draft"
        diffs = {1: [], 2: []}
        done = 0
        for key, _ in train + val:
            try:
                plain = load(src / key, size, False).astype(np.int16)
            except Exception:  # noqa: BLE001
                continue
            done += 1
            for margin in diffs:
                drafted = load(src / key, size, True, margin).astype(np.int16)
                diffs[margin].append((float(np.abs(plain - drafted).mean()), key))
        for margin, d in diffs.items():
            mads = np.array([m for m, _ in d])
            worst = max(d)
            print(
                f"draft (shorter side kept >= {margin}xS) vs plain Pillow, {len(d)} images: MAD mean {mads.mean():.3f}, "
                f"max {worst[0]:.3f} ({worst[1]}); images over 2: {int((mads > 2).sum())}"
            )
    else:
        mode_name = f"draft x{args.draft}" if args.draft else "peer"
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        stats = Stats(size)
        done = run_split(
            src, train, size, args.rows_per_shard, ShardWriter(out / "train", size, args.rows_per_row_group),
            stats, skipped, args.draft,
        )
        done += run_split(
            src, val, size, args.rows_per_shard, ShardWriter(out / "val", size, args.rows_per_row_group),
            None, skipped, args.draft,
        )
        mean_image, mean_rgb, vals, vecs = stats.finish()
        np.save(out / "mean.npy", mean_image)
        manifest = {
            "format_version": 1,
            "image_size": size,
            "classes": [{"index": i, "wnid": w, "name": w} for i, w in enumerate(wnids)],
            "splits": {
                "train": {"rows": stats.n, "shards": -(-len(train) // args.rows_per_shard)},
                "val": {"rows": len(val) - sum(1 for s in skipped if s["path"].startswith("val/")),
                        "shards": -(-len(val) // args.rows_per_shard)},
            },
            "skipped": skipped,
            "stats": {
                "mean_image": "mean.npy",
                "mean_rgb": mean_rgb.tolist(),
                "pca": {"eigenvalues": vals.tolist(), "eigenvectors": vecs.tolist()},
            },
        }
        tmp = out / "dataset.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, out / "dataset.json")

    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        json.dumps(
            {
                "mode": mode_name,
                "images": done,
                "skipped": len(skipped),
                "seconds": round(seconds, 3),
                "images_per_s": round(done / seconds, 1),
                "cpu_seconds": round(cpu, 3),
                "images_per_cpu_s": round(done / max(cpu, 1e-9), 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
