#!/usr/bin/env python3
"""Streaming from S3 (moto on loopback) against the same dataset on local disk.

  1. renders the bundled sample (default 100 train + 10 val per class) and ingests it at
     S = 256 (the paper's size; `--image-size`) twice: into a folder, and straight into
     s3://bench/ds with `pipeline ingest --out s3://…` (both timed; the objects are the
     local files byte for byte, as tests/object_store.rs proves);
  2. per round (default 3), back to back, the same recipe (crop 7/8 of S, the paper's
     224/256), seed and flags, 2 epochs each: `pipeline stream` from the folder, from S3,
     and from S3 with a fresh `--cache` (epoch 1 cold, epoch 2 from the cache);
  3. prints each epoch's images/s (median over rounds), its ratio to the same epoch from
     local disk, and the bytes fetched from the store per image and epoch, as the stream
     itself counts them (`store_per_epoch` in its JSON report).

A loopback server measures the client's cost (requests, copies, decode of fetched
buffers), not a network's: a real bucket adds latency, which `read_ahead` row groups in
flight hide up to the bandwidth.

usage: python3 benches/stream_s3_bench.py [--train-per-class 100] [--image-size 256]
           [--rounds 3] [--work /tmp/stream-s3-bench]
Needs: target/release/pipeline and moto_server (pip install 'moto[server]').
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import time
import urllib.request


ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "pipeline"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(dataset, recipe, env, extra=()):
    out = subprocess.run(
        [BIN, "stream", "--dataset", dataset, "--recipe", recipe, "--epochs", "2",
         "--batch-size", "64", *extra],
        env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def timed(command, env):
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/stream-s3-bench")
    args = ap.parse_args()

    work = pathlib.Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = args.image_size
    recipe = work / "recipe.toml"
    recipe.write_text(
        f"[data]\nimage_size = {size}\ncrop_size = {size * 7 // 8}\n"
        "[ingest]\nrows_per_shard = 256\nrows_per_row_group = 32\n"
        "[stream]\nshuffle_buffer = 1024\n")
    src, ds = work / "src", work / "ds"
    subprocess.run([BIN, "sample", "--out", src, "--train-per-class",
                    str(args.train_per_class), "--val-per-class", "10"], check=True,
                   capture_output=True)

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true",
                   AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1")
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bench", method="PUT"))
        ingest = [BIN, "ingest", src, "--recipe", recipe, "--quiet", "--out"]
        ingest_local = timed([*ingest, ds], env)
        ingest_s3 = timed([*ingest, "s3://bench/ds"], env)

        runs = {"local": [], "s3": [], "s3 + cache": []}
        for r in range(args.rounds):
            reports = {
                "local": stream(str(ds), recipe, env),
                "s3": stream("s3://bench/ds", recipe, env),
                "s3 + cache": stream("s3://bench/ds", recipe, env,
                                     ["--cache", str(work / f"cache-{r}")]),
            }
            for name, report in reports.items():
                runs[name].append(report)
            print(f"round {r + 1}: " + ", ".join(
                f"{name} {report['epoch_images_per_s'][0]:.0f} then "
                f"{report['epoch_images_per_s'][1]:.0f}" for name, report in reports.items())
                + " images/s")
    finally:
        moto.kill()
        moto.wait()

    med = statistics.median
    images = runs["local"][0]["images"] // 2
    print(f"S = {size}, crop {size * 7 // 8}, {images} train images streamed per epoch, "
          f"{args.rounds} rounds (medians):")
    print(f"  ingest         local {images / ingest_local:6.0f} images/s, "
          f"to s3 {images / ingest_s3:6.0f} images/s ({ingest_local / ingest_s3:.2f}x)")
    local = [med(r["epoch_images_per_s"][e] for r in runs["local"]) for e in (0, 1)]
    for name, reports in runs.items():
        rates = [med(r["epoch_images_per_s"][e] for r in reports) for e in (0, 1)]
        line = f"  {name:12s} epoch 1 {rates[0]:6.0f} images/s ({rates[0] / local[0]:.2f}x local)"
        line += f", epoch 2 {rates[1]:6.0f} images/s ({rates[1] / local[1]:.2f}x local)"
        if name != "local":
            fetched = [t["fetched_bytes"] / images for t in reports[-1]["store_per_epoch"]]
            line += f"; fetched per image {fetched[0]:.0f}, {fetched[1]:.0f} bytes"
        print(line)
    print(f"  ({size}x{size}x3 = {size * size * 3} pixel bytes per image; epoch 1 also "
          "fills the shuffle buffer)")

if __name__ == "__main__":
    main()
