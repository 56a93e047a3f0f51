#!/usr/bin/env python3
"""Ingest throughput: `pipeline ingest` against its Pillow peer, in one run.

  1. renders the bundled sample as an ImageNet tree (default 300 train + 10 val per class,
     3,100 JPEGs with shorter side 256-500), and reads every file once so that all runs
     start from the page cache;
  2. per round (default 2), back to back on the same files:
       peer          benches/ingest_peer.py, Pillow + numpy + pyarrow, one process, taskset -c 0
       pillow-floor  benches/ingest_peer.py --decode-only (Image.open + convert), taskset -c 0
       ours w1       pipeline ingest --workers 1, taskset -c 0
       ours w2       pipeline ingest --workers 2, unpinned
       2 x ours w1   two `--workers 1` ingests at once, pinned to cores 0 and 1: what two
                     single-worker processes get from the machine, the ceiling for w2
     each under /usr/bin/time -v (wall, user+sys CPU, peak RSS), into a fresh --out;
  3. large sources (DCT-domain downscaling): renders a small tree with shorter side
     1500-2000 and runs peer, peer --draft 1 and --draft 2
     (libjpeg-turbo decodes at 1/2..1/8 scale, keeping the shorter side >= S, or >= 2S)
     and ours w1, all on core 0, plus the draft paths' pixel difference to the plain path;
  4. prints a table: images/s, images/s per core (wall x cores given), images per CPU-second
     (user+sys: robust when other processes share the machine), peak RSS, ratio ours/peer.

Ratios compare per-core rates measured in the same round. The machine may be shared (other
builds): the CPU-second column is the steadier one; both are reported.

usage: python3 benches/ingest_bench.py [--train-per-class 300] [--val-per-class 10]
           [--rounds 3] [--large-per-class 10] [--work /tmp/ingest-bench] [--save]
  --save writes the output to benches/results/ingest-<date>.txt as well.
Needs: target/release/pipeline (cargo build --release), python3 with pillow, numpy,
pyarrow; taskset and /usr/bin/time (Debian: util-linux, time).
"""
import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys

from measure import collect, launch, say, say_medians, save, timed

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "pipeline"
PEER = ROOT / "benches" / "ingest_peer.py"

def warm(tree):
    for path in tree.rglob("*"):
        if path.is_file():
            path.read_bytes()


def render(out, train, val, extra=()):
    if out.exists():
        shutil.rmtree(out)
    subprocess.run(
        [str(BIN), "sample", "--out", str(out), "--train-per-class", str(train), "--val-per-class", str(val), *extra],
        check=True, capture_output=True,
    )
    files = [p for p in out.rglob("*.JPEG")]
    warm(out)
    return len(files), sum(p.stat().st_size for p in files)


def ours_command(src, out, workers):
    if out.exists():
        shutil.rmtree(out)
    return [str(BIN), "ingest", str(src), "--out", str(out), "--workers", str(workers), "--quiet"]


def ours_result(stdout, m):
    line = next(l for l in stdout.splitlines() if l.startswith("this run"))
    m["images"] = int(re.search(r"this run\s+(\d+) images", line).group(1))
    m["inner"] = line.strip()
    return m


def ours(src, out, workers, pin):
    return ours_result(*timed(ours_command(src, out, workers), pin))


def ours_pair(src, work):
    """Two independent `--workers 1` ingests at once, one pinned to each core: the most
    two single-worker processes get out of this machine, the ceiling for --workers 2."""
    launched = [launch(ours_command(src, work / f"out-pair{core}", 1), core) for core in (0, 1)]
    a, b = (ours_result(*collect(l)) for l in launched)
    return {"images": a["images"] + b["images"], "wall": max(a["wall"], b["wall"]), "cpu": a["cpu"] + b["cpu"],
            "rss": a["rss"] + b["rss"], "inner": f"{a['inner']} | {b['inner']}"}


def peer(src, out, pin, *flags):
    if out.exists():
        shutil.rmtree(out)
    stdout, m = timed([sys.executable, str(PEER), str(src), "--out", str(out), *flags], pin)
    result = json.loads(stdout.strip().splitlines()[-1])
    m["images"] = result["images"]
    m["inner"] = stdout.strip().splitlines()[-1]
    m["stdout"] = stdout
    return m


def row(name, m, cores, base=None):
    rate = m["images"] / m["wall"]
    per_core = rate / cores
    per_cpu = m["images"] / max(m["cpu"], 1e-9)
    ratio = ""
    if base is not None:
        base_core = base["images"] / base["wall"]
        base_cpu = base["images"] / max(base["cpu"], 1e-9)
        ratio = f"{per_core / base_core:6.2f}x {per_cpu / base_cpu:6.2f}x"
    say(
        f"{name:<22}{m['images']:>7}{m['wall']:>8.2f}{rate:>10.1f}{cores:>6}{per_core:>10.1f}"
        f"{m['cpu']:>8.2f}{per_cpu:>10.1f}{m['rss']:>9.0f}  {ratio}"
    )


def header():
    say(
        f"{'run':<22}{'images':>7}{'wall s':>8}{'img/s':>10}{'cores':>6}{'img/s/core':>10}"
        f"{'CPU s':>8}{'img/CPU-s':>10}{'RSS MB':>9}  ratio/peer: per core, per CPU-s"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--large-per-class", type=int, default=10, help="0 skips the large-source part")
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/ingest-bench"))
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run cargo build --release first")
    import numpy
    import PIL
    import pyarrow
    from PIL import features

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    say(f"# ingest bench, {datetime.datetime.now().isoformat(timespec='seconds')}")
    say(f"# host: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    say(f"# peer: Python {platform.python_version()}, Pillow {PIL.__version__} (libjpeg-turbo {features.version('jpg')}), "
        f"numpy {numpy.__version__}, pyarrow {pyarrow.__version__}")
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    say(f"# ours: {BIN.relative_to(ROOT)} (commit {git.stdout.strip()}, working tree may differ)")

    src = work / "src"
    n, size = render(src, args.train_per_class, args.val_per_class)
    say(f"# sample: {n} JPEG-named files, {size / 1e6:.1f} MB, shorter side 256-500 "
        f"(--train-per-class {args.train_per_class} --val-per-class {args.val_per_class}); S = 256, "
        f"1024 rows/shard, 64 rows/row group, uncompressed")
    say()
    rate = lambda m: m["images"] / m["wall"]
    per_cpu = lambda m: m["images"] / m["cpu"]
    rounds = []
    for r in range(1, args.rounds + 1):
        say(f"## round {r}")
        header()
        p = peer(src, work / "out-peer", True)
        f = peer(src, work / "out-floor", True, "--decode-only")
        o1 = ours(src, work / "out-w1", 1, True)
        o2 = ours(src, work / "out-w2", 2, False)
        pair = ours_pair(src, work)
        row("peer (Pillow) c0", p, 1)
        row("pillow decode floor c0", f, 1, p)
        row("ours --workers 1 c0", o1, 1, p)
        row("ours --workers 2", o2, 2, p)
        row("2 x ours w1, c0 + c1", pair, 2, p)
        rounds.append({"per core": rate(o1) / rate(p), "per CPU-s": per_cpu(o1) / per_cpu(p),
                       "w2/w1": rate(o2) / rate(o1), "w2/ceiling": rate(o2) / rate(pair)})
        say(f"   ours w1 vs Pillow's decode floor: {rate(o1) / rate(f):.2f}x wall, "
            f"{(o1['images'] / o1['cpu']) / (f['images'] / f['cpu']):.2f}x CPU; w2/w1 scaling "
            f"{rate(o2) / rate(o1):.2f}x wall; two independent w1 processes at once {rate(pair) / rate(o1):.2f}x "
            f"(the machine's ceiling for two workers): w2 reaches {rate(o2) / rate(pair):.2f} of it")
        for name, m in [("peer", p), ("floor", f), ("ours w1", o1), ("ours w2", o2), ("2 x ours w1", pair)]:
            say(f"   {name}: {m['inner']}")
        say()

    say_medians("peer", rounds)
    say()

    # The same crops? Compare the two datasets' stats (a quick sanity check, not the test).
    ours_manifest = json.loads((work / "out-w1" / "dataset.json").read_text())
    peer_manifest = json.loads((work / "out-peer" / "dataset.json").read_text())
    say(f"sanity: train rows ours {ours_manifest['splits']['train']['rows']} peer {peer_manifest['splits']['train']['rows']}; "
        f"eigenvalues ours {[round(v, 5) for v in ours_manifest['stats']['pca']['eigenvalues']]} "
        f"peer {[round(v, 5) for v in peer_manifest['stats']['pca']['eigenvalues']]}")
    say()

    if args.large_per_class > 0:
        large = work / "src-large"
        n, size = render(large, args.large_per_class, 1, ("--min-side", "1500", "--max-side", "2000"))
        say(f"## large sources: {n} files, {size / 1e6:.1f} MB, shorter side 1500-2000 (DCT-domain downscaling)")
        header()
        p = peer(large, work / "out-large-peer", True)
        d1 = peer(large, work / "out-large-draft1", True, "--draft", "1")
        d2 = peer(large, work / "out-large-draft2", True, "--draft", "2")
        o1 = ours(large, work / "out-large-w1", 1, True)
        row("peer (Pillow) c0", p, 1)
        row("peer draft>=S c0", d1, 1, p)
        row("peer draft>=2S c0", d2, 1, p)
        row("ours --workers 1 c0", o1, 1, p)
        cmp_out, _ = timed([sys.executable, str(PEER), str(large), "--compare-draft"], False)
        for line in cmp_out.strip().splitlines()[:2]:
            say(f"   {line}")
        say()

    if args.save:
        save(ROOT, "ingest")


if __name__ == "__main__":
    main()
