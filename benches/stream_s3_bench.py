#!/usr/bin/env python3
"""Stream throughput from S3 (moto on loopback) against the same dataset on local disk.

  1. renders the bundled sample (default 100 train + 10 val per class) and ingests it at
     the sample recipe's 72 px;
  2. starts `moto_server` on a free loopback port and uploads the dataset with boto3 to
     s3://bench/ds;
  3. per round (default 3), back to back: `pipeline stream` from the local folder, then
     from s3://bench/ds, same recipe, seed and flags (--epochs E);
  4. prints images/s of each (the median over rounds), the ratio s3/local, and the bytes
     fetched per image: the label and pixel column chunks of the split over its rows (what
     each epoch fetches; the footers once, on open, are not counted).

A loopback server measures the client's cost (requests, copies, decode of fetched
buffers), not a network's: a real bucket adds latency, which `read_ahead` row groups in
flight hide up to the bandwidth.

usage: python3 benches/stream_s3_bench.py [--train-per-class 100] [--epochs 2]
           [--rounds 3] [--work /tmp/stream-s3-bench]
Needs: target/release/pipeline, moto_server and boto3 (pip install 'moto[server]'),
pyarrow.
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

import boto3
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "pipeline"
RECIPE = ROOT / "pipeline" / "sample.toml"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(dataset, epochs, env):
    out = subprocess.run(
        [BIN, "stream", "--dataset", dataset, "--recipe", RECIPE, "--epochs", str(epochs),
         "--batch-size", "64"],
        env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/stream-s3-bench")
    args = ap.parse_args()

    work = pathlib.Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    src, ds = work / "src", work / "ds"
    subprocess.run([BIN, "sample", "--out", src, "--train-per-class",
                    str(args.train_per_class), "--val-per-class", "10"], check=True,
                   capture_output=True)
    subprocess.run([BIN, "ingest", src, "--out", ds, "--recipe", RECIPE, "--quiet"],
                   check=True, capture_output=True)

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
        keys = dict(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                    AWS_REGION="us-east-1")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench")
        s3.create_bucket(Bucket="bench")
        for path in sorted(ds.rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), "bench", f"ds/{path.relative_to(ds)}")
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true", **keys)

        local, remote = [], []
        for r in range(args.rounds):
            local.append(stream(str(ds), args.epochs, env)["images_per_s"])
            remote.append(stream("s3://bench/ds", args.epochs, env)["images_per_s"])
            print(f"round {r + 1}: local {local[-1]:.0f} images/s, s3 {remote[-1]:.0f} images/s")
    finally:
        moto.kill()
        moto.wait()

    rows = fetched = 0
    for shard in sorted((ds / "train").glob("*.parquet")):
        meta = pq.ParquetFile(shard).metadata
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                if column.path_in_schema in ("label", "pixels"):
                    fetched += column.total_compressed_size
    lo, re_ = statistics.median(local), statistics.median(remote)
    print(f"train rows {rows}, {args.epochs} epochs per run, {args.rounds} rounds (medians):")
    print(f"  local  {lo:8.0f} images/s")
    print(f"  s3     {re_:8.0f} images/s   (moto on loopback)")
    print(f"  s3/local {re_ / lo:.2f}")
    print(f"  bytes fetched per image {fetched / rows:.0f} (72x72x3 = {72 * 72 * 3} pixels)")


if __name__ == "__main__":
    main()
