#!/usr/bin/env python3
"""ImageNet-scale behaviour of ingest and the stream, raw against jpeg shards.

    python3 benches/ingest_scale_bench.py [--sizes 10000,30000,100000] [--image-size 128]
        [--bytes-images 2000] [--work DIR] [--save]

Renders an ImageNet-style tree of 1000 class folders (n00000000 … n00000999) of small
JPEGs like photos: sides 200–500 px, aspect 3:4 to 16:9 either way, 5 % grayscale,
smooth random scenes with noise (so they compress as photos do, not as flat colour),
quality 75–95. For each size N (all classes, N/1000 images a class) and each encoding it
runs, under /usr/bin/time -v:

- `pipeline ingest` (all cores): images per CPU-second and per wall second, peak RSS,
  bytes per image of the shards;
- `pipeline stream --epochs 1` (all cores), warm page cache: images per CPU-second, wall
  rate, peak RSS;
- the same epoch after `echo 3 > /proc/sys/vm/drop_caches` (first epoch from a cold
  page cache); if the kernel refuses (a container without the right), the line says so.

Each size's source and datasets are deleted before the next (disk is the limit: raw
100 k at S = 256 would be 19.7 GB). Bytes per image at S = 256 are measured apart on
--bytes-images images, for the ImageNet extrapolation. Prints a log (and a markdown table
at the end); --save writes it to benches/results/ingest-scale-<date>.txt.
"""
import argparse
import json
import multiprocessing
import os
import pathlib
import shutil
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from measure import say, save, timed  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "target" / "release" / "pipeline"
CLASSES = 1000


def render_one(job):
    """One photo-like JPEG, deterministic from its index."""
    path, index = job
    rng = np.random.default_rng(index)
    short = int(rng.integers(200, 501))
    aspect = float(rng.uniform(4 / 3, 16 / 9))
    long = int(short * aspect)
    width, height = (long, short) if rng.random() < 0.6 else (short, long)
    # A coarse random scene with noise at half resolution, upscaled smoothly: detail at
    # every scale, as in photos, for a fraction of the cost of full-size noise.
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    half = (width // 2, height // 2)
    scene = np.asarray(Image.fromarray(coarse).resize(half, Image.BILINEAR), dtype=np.int16)
    scene += rng.integers(-16, 17, (half[1], half[0], 1), dtype=np.int16)
    image = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    if rng.random() < 0.05:
        image = image.convert("L")
    image.save(path, quality=int(rng.integers(75, 96)))


def render(root, images):
    """`images` JPEGs over 1000 class folders under root/train, and a val/ tree of one
    image per class (ingest wants a val split or none: none here)."""
    jobs = []
    per_class = images // CLASSES
    for c in range(CLASSES):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            jobs.append((folder / f"n{c:08d}_{i}.JPEG", c * 1_000_000 + i))
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(render_one, jobs, chunksize=64)
    return len(jobs)


def tree_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drop_caches():
    """True when the kernel dropped the page cache."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        say(f"  cold cache: refused ({e}); the cold epoch below is NOT from a cold cache")
        return False


def stream(dataset, image_size):
    """One epoch at the paper's crop proportion of S (stream's default without a recipe)."""
    out, m = timed([PIPELINE, "stream", "--dataset", dataset, "--epochs", "1", "--batch-size", "128"], False)
    report = json.loads(out.strip().splitlines()[-1])
    return report, m


def measure(work, source, images, encoding, image_size, cores):
    out = work / f"ds-{encoding}"
    shutil.rmtree(out, ignore_errors=True)
    _, ingest = timed([PIPELINE, "ingest", source, "--out", out, "--image-size", image_size,
                       "--encoding", encoding, "--quiet"], False)
    shards = tree_bytes(out / "train")
    warm, warm_m = stream(out, image_size)
    cold_ok = drop_caches()
    cold, cold_m = stream(out, image_size)
    row = {
        "images": images,
        "encoding": encoding,
        "ingest_per_cpu_s": images / ingest["cpu"],
        "ingest_per_s": images / ingest["wall"],
        "ingest_rss_mb": ingest["rss"],
        "bytes_per_image": shards / images,
        "stream_per_cpu_s": warm["images"] / warm_m["cpu"],
        "stream_per_s": warm["images_per_s"],
        "stream_rss_mb": warm_m["rss"],
        "cold_per_s": cold["images_per_s"] if cold_ok else None,
        "cold_rss_mb": cold_m["rss"],
    }
    say(f"  {encoding:4} N={images}: ingest {row['ingest_per_cpu_s']:.0f} img/CPU-s "
        f"({row['ingest_per_s']:.0f} img/s on {cores} cores), RSS {row['ingest_rss_mb']:.0f} MB, "
        f"{row['bytes_per_image']:.0f} B/image; stream {row['stream_per_cpu_s']:.0f} img/CPU-s "
        f"({row['stream_per_s']:.0f} img/s), RSS {row['stream_rss_mb']:.0f} MB; cold first epoch "
        f"{row['cold_per_s'] if row['cold_per_s'] is None else round(row['cold_per_s'])} img/s")
    shutil.rmtree(out)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--bytes-images", type=int, default=2000, help="images for bytes/image at S = 256")
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/ingest-scale"))
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    cores = os.cpu_count()
    say(f"ingest_scale_bench: S = {args.image_size}, sizes {args.sizes}, {cores} cores")

    rows = []
    for images in [int(s) for s in args.sizes.split(",")]:
        shutil.rmtree(args.work, ignore_errors=True)
        source = args.work / "src"
        n = render(source, images)
        say(f"N = {n}: source {tree_bytes(source) / n:.0f} B/image of JPEG")
        for encoding in ["raw", "jpeg"]:
            rows.append(measure(args.work, source, n, encoding, args.image_size, cores))
        shutil.rmtree(args.work)

    # Bytes per image at the paper's S = 256, for the ImageNet extrapolation.
    source = args.work / "src"
    n = render(source, args.bytes_images)
    per_image = {}
    for encoding in ["raw", "jpeg"]:
        out = args.work / f"ds-{encoding}"
        timed([PIPELINE, "ingest", source, "--out", out, "--image-size", "256", "--encoding", encoding, "--quiet"], False)
        per_image[encoding] = tree_bytes(out / "train") / n
    say(f"S = 256 on {n} images: raw {per_image['raw']:.0f} B/image, jpeg {per_image['jpeg']:.0f} B/image "
        f"({per_image['raw'] / per_image['jpeg']:.1f}x smaller); source {tree_bytes(source) / n:.0f} B/image")
    shutil.rmtree(args.work)

    say()
    say("| N | encoding | ingest img/CPU-s | ingest peak RSS MB | bytes/image | stream img/CPU-s | stream peak RSS MB | cold first epoch img/s |")
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cold = "refused" if r["cold_per_s"] is None else f"{r['cold_per_s']:.0f}"
        say(f"| {r['images']} | {r['encoding']} | {r['ingest_per_cpu_s']:.0f} | {r['ingest_rss_mb']:.0f} | "
            f"{r['bytes_per_image']:.0f} | {r['stream_per_cpu_s']:.0f} | {r['stream_rss_mb']:.0f} | {cold} |")
    say(json.dumps({"rows": rows, "bytes_per_image_s256": per_image, "images_s256": n}))
    if args.save:
        save(ROOT, "ingest-scale")


if __name__ == "__main__":
    main()
