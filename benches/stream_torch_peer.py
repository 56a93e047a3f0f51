#!/usr/bin/python3
"""The stream's PyTorch peer: a DataLoader doing the paper's training augmentation.

Run with Debian's /usr/bin/python3 (python3-torch 1.13, CPU). That interpreter has no
pyarrow, so benches/stream_bench.py first exports the dataset's training rows, in shard
order, to one raw file (`pixels.u8`, the shards' `pixels` bytes back to back, and
`labels.npy`); this script reads that into memory (as a map-style Dataset reading the
Parquet would) and times only the loader.

Per sample, in torch ops (what a torchvision-style transform does): a random C x C crop
of the HWC uint8 tensor (offsets uniform in 0..S-C), horizontal flip with p = 0.5, to CHW
float32 minus the per-pixel mean image (cropped and flipped with the image), and with
--lighting the paper's PCA lighting (+ 255 * P (alpha * lambda), alpha ~ N(0, 0.1),
eigen-pairs from dataset.json). DataLoader(batch_size=B, shuffle=True, drop_last=True,
num_workers=W, persistent_workers when W > 0), default collate. torch uses one intra-op
thread (in the main process and in every worker).

usage: /usr/bin/python3 stream_torch_peer.py --dataset DIR --export DIR [--workers 0]
           [--epochs 1] [--crop 224] [--batch-size 128] [--lighting | --no-lighting]

Prints one JSON line: images, seconds (loader iteration), load_seconds, images_per_s,
loop_cpu_seconds (CPU time of the iteration: this process plus its worker processes),
peak_rss_mb (this process; workers share its pages copy-on-write).
"""
import argparse
import gc
import json
import pathlib
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class AugmentedRows(Dataset):
    def __init__(self, pixels, labels, mean_chw, eigenvalues, eigenvectors, crop, lighting, lighting_std):
        self.pixels = torch.from_numpy(pixels)  # [N,S,S,3] uint8, shared with workers
        self.labels = torch.from_numpy(labels)
        self.mean = torch.from_numpy(mean_chw)  # [3,S,S] float32
        self.eigenvalues = torch.from_numpy(eigenvalues)
        self.eigenvectors = torch.from_numpy(eigenvectors)  # columns are the eigenvectors
        self.size = pixels.shape[1]
        self.crop = crop
        self.lighting = lighting
        self.lighting_std = lighting_std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        c, room = self.crop, self.size - self.crop + 1
        x = int(torch.randint(room, ()))
        y = int(torch.randint(room, ()))
        img = self.pixels[i, y : y + c, x : x + c].permute(2, 0, 1)  # CHW view, uint8
        mean = self.mean[:, y : y + c, x : x + c]
        if torch.rand(()) < 0.5:
            img, mean = img.flip(2), mean.flip(2)
        out = img.float().sub_(mean)
        if self.lighting:
            alpha = torch.randn(3) * self.lighting_std
            offset = 255.0 * (self.eigenvectors @ (alpha * self.eigenvalues))
            out.add_(offset.view(3, 1, 1))
        return out, self.labels[i]


def one_thread(_worker_id=None):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", type=pathlib.Path, required=True)
    ap.add_argument("--export", type=pathlib.Path, required=True)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lighting", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--lighting-std", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    one_thread()
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    manifest = json.loads((args.dataset / "dataset.json").read_text())
    size = manifest["image_size"]
    labels = np.load(args.export / "labels.npy").astype(np.int64)
    pixels = np.fromfile(args.export / "pixels.u8", np.uint8).reshape(len(labels), size, size, 3)
    mean_chw = np.ascontiguousarray(np.load(args.dataset / "mean.npy").astype(np.float32).transpose(2, 0, 1))
    pca = manifest["stats"]["pca"]
    dataset = AugmentedRows(
        pixels, labels, mean_chw, np.array(pca["eigenvalues"], np.float32), np.array(pca["eigenvectors"], np.float32),
        args.crop, args.lighting, args.lighting_std,
    )
    load_seconds = time.perf_counter() - t0

    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, worker_init_fn=one_thread,
        generator=torch.Generator().manual_seed(args.seed),
    )
    images = 0
    checksum = 0.0
    t1, c1 = time.perf_counter(), time.process_time()
    for _epoch in range(args.epochs):
        for batch, batch_labels in loader:
            images += batch.shape[0]
            checksum += float(batch[0, 0, 0, 0])  # touch the batch as a consumer would
    seconds = time.perf_counter() - t1
    del loader
    gc.collect()  # joins persistent workers, so their CPU time is counted below
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    loop_cpu = time.process_time() - c1 + children.ru_utime + children.ru_stime
    print(
        json.dumps(
            {
                "peer": f"torch {torch.__version__}",
                "workers": args.workers,
                "lighting": args.lighting,
                "images": images,
                "seconds": round(seconds, 3),
                "load_seconds": round(load_seconds, 3),
                "images_per_s": round(images / seconds, 1),
                "loop_cpu_seconds": round(loop_cpu, 3),
                "peak_rss_mb": round(self_usage.ru_maxrss / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
