#!/usr/bin/env python3
"""Streaming from S3 (moto on loopback) against the same dataset on local disk.

  1. renders the bundled sample (default 100 train + 10 val per class) and ingests it at
     S = 256 (the paper's size; `--image-size`) twice: into a folder, and straight into
     s3://bench/ds with `pipeline ingest --out s3://…` (both timed; the objects are the
     local files byte for byte, as tests/object_store.rs proves);
  2. per round (default 3), back to back, the same recipe (crop 7/8 of S, the paper's
     224/256), seed and flags, 2 epochs each: `pipeline stream` from the folder, from S3,
     and from S3 with a fresh `--cache` (epoch 1 cold, epoch 2 from the cache);
  3. prints images/s of each (median over rounds; per epoch for the cached one), the
     ratios to local, and the bytes fetched from the store per image and epoch, as the
     stream itself counts them (`store_per_epoch` in its JSON report).

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

        local, remote, cold, warm, fetched = [], [], [], [], None
        for r in range(args.rounds):
            local.append(stream(str(ds), recipe, env)["images_per_s"])
            report = stream("s3://bench/ds", recipe, env)
            remote.append(report["images_per_s"])
            cache = work / f"cache-{r}"
            cached = stream("s3://bench/ds", recipe, env, ["--cache", str(cache)])
            cold.append(cached["epoch_images_per_s"][0])
            warm.append(cached["epoch_images_per_s"][1])
            rows = report["images"] // 2
            fetched = [t["fetched_bytes"] / rows for t in report["store_per_epoch"]]
            fetched_cached = [t["fetched_bytes"] / rows for t in cached["store_per_epoch"]]
            print(f"round {r + 1}: local {local[-1]:.0f}, s3 {remote[-1]:.0f}, "
                  f"s3 + cache {cold[-1]:.0f} then {warm[-1]:.0f} images/s")
    finally:
        moto.kill()
        moto.wait()

    med = statistics.median
    lo = med(local)
    images = report["images"] // 2
    print(f"S = {size}, crop {size * 7 // 8}, {images} train images streamed per epoch, "
          f"{args.rounds} rounds (medians):")
    print(f"  ingest         local {images / ingest_local:6.0f} images/s, "
          f"to s3 {images / ingest_s3:6.0f} images/s ({ingest_local / ingest_s3:.2f}x)")
    print(f"  local          {lo:8.0f} images/s")
    print(f"  s3             {med(remote):8.0f} images/s  ({med(remote) / lo:.2f}x local)")
    print(f"  s3 + cache, 1  {med(cold):8.0f} images/s  ({med(cold) / lo:.2f}x local, cold)")
    print(f"  s3 + cache, 2  {med(warm):8.0f} images/s  ({med(warm) / lo:.2f}x local, from disk)")
    print(f"  fetched per image and epoch: s3 {fetched[0]:.0f}, {fetched[1]:.0f} bytes; "
          f"s3 + cache {fetched_cached[0]:.0f}, {fetched_cached[1]:.0f} bytes "
          f"({size}x{size}x3 = {size * size * 3} pixels)")


if __name__ == "__main__":
    main()
