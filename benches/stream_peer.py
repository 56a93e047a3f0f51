#!/usr/bin/env python3
"""The stream's numpy peer: the paper's training augmentation over the same shards.

One process. Loads every training shard of a dataset directory with pyarrow and views
each `pixels` chunk in place (np.frombuffer on the Arrow buffer, reshaped [n,S,S,3]: no
copy), then per epoch draws a random permutation and builds batches of B: for each image
a random C x C crop (offsets uniform in 0..S-C), a horizontal flip with p = 0.5, minus the
per-pixel mean image (mean.npy, cropped and flipped with the image), written as f32 CHW
into a reused [B,3,C,C] batch buffer; with --lighting also the PCA lighting of the paper:
+ 255 * P (alpha * lambda), alpha_i ~ N(0, 0.1), eigen-pairs from dataset.json. Labels as
int64. The last partial batch of an epoch is dropped (as `pipeline stream` does).

A jpeg dataset (dataset.json "encoding": "jpeg") is read as its `image.bytes` column, and
each image is decoded with Pillow (`Image.open(BytesIO(b)).convert("RGB")`, libjpeg-turbo)
into an [S,S,3] array before the same crop, flip, mean and lighting: the same work the
stream's augmentation workers do for a jpeg row.

usage: stream_peer.py --dataset DIR [--crop 224] [--batch-size 128] [--epochs 1]
                      [--lighting | --no-lighting] [--seed 0] [--check-batch OUT.npz]

Prints one JSON line: images, seconds (augmentation loop only), load_seconds (reading the
shards into Arrow memory, once), images_per_s, images_per_s_with_load, loop_cpu_seconds
(CPU time of the augmentation loop), peak_rss_mb.
"""
import argparse
import io
import json
import pathlib
import resource
import time

import numpy as np
import pyarrow.parquet as pq


def load_views(dataset, size):
    """Zero-copy [n,S,S,3] uint8 views of every pixels chunk, plus labels, and the
    (chunk, row) of each global row index."""
    row_bytes = size * size * 3
    views, labels, chunk_of, row_of = [], [], [], []
    tables = []  # keep the Arrow memory alive
    for path in sorted((dataset / "train").glob("part-*.parquet")):
        table = pq.read_table(path, columns=["label", "pixels"])
        tables.append(table)
        for chunk, label_chunk in zip(table.column("pixels").chunks, table.column("label").chunks):
            n = len(chunk)
            buf = chunk.buffers()[1]
            view = np.frombuffer(buf, np.uint8, count=n * row_bytes, offset=chunk.offset * row_bytes)
            views.append(view.reshape(n, size, size, 3))
            labels.append(label_chunk.to_numpy().astype(np.int64))
            chunk_of.append(np.full(n, len(views) - 1, np.int32))
            row_of.append(np.arange(n, dtype=np.int32))
    return tables, views, np.concatenate(labels), np.concatenate(chunk_of), np.concatenate(row_of)


def load_jpegs(dataset):
    """Every training row's JPEG bytes (Python bytes) and labels, in file order."""
    jpegs, labels = [], []
    for path in sorted((dataset / "train").glob("part-*.parquet")):
        table = pq.read_table(path, columns=["label", "image"])
        jpegs.extend(table.column("image").combine_chunks().field("bytes").to_pylist())
        labels.append(table.column("label").to_numpy().astype(np.int64))
    return jpegs, np.concatenate(labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=pathlib.Path, required=True)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lighting", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--lighting-std", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-batch", type=pathlib.Path, help="save the first batch with its draws (for checking)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    manifest = json.loads((args.dataset / "dataset.json").read_text())
    size, crop, batch = manifest["image_size"], args.crop, args.batch_size
    pca = manifest["stats"]["pca"]
    eigenvalues = np.array(pca["eigenvalues"], np.float64)
    eigenvectors = np.array(pca["eigenvectors"], np.float64)  # columns are the eigenvectors
    # The mean image once as CHW f32, so each crop of it is a strided view.
    mean_chw = np.ascontiguousarray(np.load(args.dataset / "mean.npy").astype(np.float32).transpose(2, 0, 1))
    jpeg = manifest.get("encoding", "raw") == "jpeg"
    if jpeg:
        from PIL import Image

        jpegs, labels = load_jpegs(args.dataset)
    else:
        tables, views, labels, chunk_of, row_of = load_views(args.dataset, size)
    load_seconds = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed)
    out = np.empty((batch, 3, crop, crop), np.float32)
    out_labels = np.empty(batch, np.int64)
    n = len(labels)
    images = 0
    checksum = 0.0
    t1, c1 = time.perf_counter(), time.process_time()
    for _epoch in range(args.epochs):
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            # All of the batch's random draws at once (cheaper than per image in Python).
            xs = rng.integers(0, size - crop + 1, batch)
            ys = rng.integers(0, size - crop + 1, batch)
            flips = rng.random(batch) < 0.5
            if args.lighting:
                alphas = rng.normal(0.0, args.lighting_std, (batch, 3))
                offsets = (255.0 * (alphas * eigenvalues) @ eigenvectors.T).astype(np.float32)  # [B,3]
            for i in range(batch):
                j = idx[i]
                if jpeg:
                    with Image.open(io.BytesIO(jpegs[j])) as decoded:
                        src = np.asarray(decoded.convert("RGB"))
                else:
                    src = views[chunk_of[j]][row_of[j]]
                x, y = xs[i], ys[i]
                img = src[y : y + crop, x : x + crop].transpose(2, 0, 1)  # CHW view of HWC u8
                mean = mean_chw[:, y : y + crop, x : x + crop]
                if flips[i]:
                    img, mean = img[:, :, ::-1], mean[:, :, ::-1]
                o = out[i]
                np.subtract(img, mean, out=o, dtype=np.float32)
                if args.lighting:
                    o += offsets[i][:, None, None]
                out_labels[i] = labels[j]
            images += batch
            checksum += float(out[0, 0, 0, 0])  # touch the batch as a consumer would
            if args.check_batch is not None and images == batch:
                np.savez(args.check_batch, images=out, labels=out_labels, idx=idx, xs=xs, ys=ys, flips=flips,
                         offsets=offsets if args.lighting else np.zeros((batch, 3), np.float32))
    seconds = time.perf_counter() - t1
    loop_cpu = time.process_time() - c1
    print(
        json.dumps(
            {
                "peer": "numpy+pillow" if jpeg else "numpy",
                "lighting": args.lighting,
                "images": images,
                "seconds": round(seconds, 3),
                "load_seconds": round(load_seconds, 3),
                "images_per_s": round(images / seconds, 1),
                "images_per_s_with_load": round(images / (seconds + load_seconds), 1),
                "loop_cpu_seconds": round(loop_cpu, 3),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
