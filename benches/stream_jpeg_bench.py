#!/usr/bin/env python3
"""The stream on jpeg rows against numpy + Pillow doing the same decode + augmentation.

    python3 benches/stream_jpeg_bench.py [--train-per-class 300] [--image-size 256]
        [--epochs 2] [--rounds 3] [--work /tmp/stream-jpeg-bench] [--save]

Renders the bundled sample, ingests it with `--encoding jpeg` (quality 90), then per round,
back to back, both pinned to core 0 under /usr/bin/time -v, for --epochs epochs of the
paper's training views (random crop of 224/256 of S + flip + per-pixel mean + PCA
lighting, f32 CHW, batch 128):

  peer   benches/stream_peer.py: Pillow decodes each row's JPEG (libjpeg-turbo), numpy
         crops, flips, subtracts and lights it (the JPEG bytes are loaded once, excluded);
  ours   pipeline stream --workers 1: the whole run (Parquet reads, CRC, zune-jpeg
         decode into a reused buffer, augmentation, batching).

Reports images per CPU-second of each and the ratio ours/peer per round and its median
(CPU-seconds: the machine may be shared; they are the steadier figure). --save writes the
log to benches/results/stream-jpeg-<date>.txt.
"""
import argparse
import json
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from measure import say, save, timed  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "target" / "release" / "pipeline"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/stream-jpeg-bench"))
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    source, dataset = args.work / "src", args.work / "ds"
    timed([PIPELINE, "sample", "--out", source, "--train-per-class", args.train_per_class,
           "--val-per-class", 2], False)
    timed([PIPELINE, "ingest", source, "--out", dataset, "--image-size", args.image_size,
           "--encoding", "jpeg", "--quiet"], False)
    crop = args.image_size * 224 // 256
    say(f"stream_jpeg_bench: S = {args.image_size}, crop {crop}, {args.epochs} epochs a run, "
        f"jpeg quality 90, both on core 0")
    ratios = []
    for r in range(args.rounds):
        out, peer = timed([sys.executable, ROOT / "benches" / "stream_peer.py", "--dataset", dataset,
                           "--crop", crop, "--epochs", args.epochs], True)
        peer_report = json.loads(out.strip().splitlines()[-1])
        peer_rate = peer_report["images"] / peer_report["loop_cpu_seconds"]
        out, ours = timed([PIPELINE, "stream", "--dataset", dataset, "--epochs", args.epochs,
                           "--workers", 1, "--batch-size", 128], True)
        ours_report = json.loads(out.strip().splitlines()[-1])
        ours_rate = ours_report["images"] / ours["cpu"]
        ratios.append(ours_rate / peer_rate)
        say(f"round {r + 1}: peer (Pillow + numpy) {peer_rate:.0f} img/CPU-s "
            f"({peer_report['images_per_s']:.0f} img/s), ours w1 {ours_rate:.0f} img/CPU-s "
            f"({ours_report['images_per_s']:.0f} img/s, peak RSS {ours['rss']:.0f} MB): "
            f"ours/peer {ours_rate / peer_rate:.2f}x")
    median = sorted(ratios)[len(ratios) // 2]
    say(f"median of {len(ratios)} rounds: ours / Pillow+numpy peer {median:.2f}x images per CPU-second "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}x)")
    shutil.rmtree(args.work)
    if args.save:
        save(ROOT, "stream-jpeg")


if __name__ == "__main__":
    main()
