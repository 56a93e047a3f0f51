#!/usr/bin/env python3
"""Exact kNN and Hamming search speed: ours (src/features/search.rs, hamming.rs) vs numpy,
side by side in one run, as ratios.

    python3 benches/retrieval_peer.py [--threads 2] [--n 10000] [--dim 4096] [--queries 1000]
                                      [--k 10] [--bits 256] [--manifest-path Cargo.toml]

Both sides search a random Gaussian database of n × dim float32 vectors for `queries`
random queries, k nearest by Euclidean distance, and n random `bits`-bit codes by
Hamming distance (the first `queries` codes as queries).

- **ours**: the bench target `search` (benches/search.rs), run through `cargo bench` with
  RAYON_NUM_THREADS = --threads: `ExactIndex` (blocked gemm distances
  ‖q‖² + ‖x‖² − 2 q·x via candle's CPU matmul, a bounded heap per query, exact distances
  recomputed for the k winners) and the scalar f64 brute force it is tested against
  (one loop per pair, 20 queries); `HammingIndex` (u64 words, popcount).
- **numpy**: the same algorithm with BLAS (OPENBLAS/OMP/MKL threads = --threads):
  blocks of 256 queries × 4096 rows, `q @ x.T`, `argpartition` for the k smallest, then
  a sort of those k; Hamming as `np.bitwise_count(a ^ b)` on uint64 views +
  `argpartition`.

Prints queries/s for each and the ratios ours/numpy (above 1: ours is faster).
"""
import argparse
import os
import re
import subprocess
import time


def numpy_exact(np, database, queries, k, query_block=256, database_block=4096):
    norms = np.einsum("ij,ij->i", database, database)
    out = []
    for qs in range(0, len(queries), query_block):
        q = queries[qs:qs + query_block]
        qn = np.einsum("ij,ij->i", q, q)
        best_d = np.full((len(q), 0), np.inf, dtype=np.float32)
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        for ds in range(0, len(database), database_block):
            x = database[ds:ds + database_block]
            d2 = qn[:, None] + norms[None, ds:ds + len(x)] - 2.0 * (q @ x.T)
            cand_d = np.concatenate([best_d, d2], axis=1)
            cand_i = np.concatenate([best_i, np.broadcast_to(np.arange(ds, ds + len(x)), d2.shape)], axis=1)
            kk = min(k, cand_d.shape[1])
            part = np.argpartition(cand_d, kk - 1, axis=1)[:, :kk]
            best_d = np.take_along_axis(cand_d, part, axis=1)
            best_i = np.take_along_axis(cand_i, part, axis=1)
        order = np.argsort(best_d, axis=1, kind="stable")
        out.append(np.take_along_axis(best_i, order, axis=1))
    return np.concatenate(out)


def numpy_hamming(np, codes, queries, k):
    words = codes.view(np.uint64)
    out = np.empty((queries, k), dtype=np.int64)
    for i, q in enumerate(words[:queries]):
        d = np.bitwise_count(words ^ q).sum(axis=1)
        part = np.argpartition(d, k - 1)[:k]
        out[i] = part[np.argsort(d[part], kind="stable")]
    return out


def ours(args):
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads),
               SEARCH_SPEED=f"{args.n}:{args.dim}:{args.queries}:{args.k}:{args.bits}")
    cmd = ["cargo", "bench", "--manifest-path", args.manifest_path, "--bench", "search"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cargo failed:\n{out.stdout}\n{out.stderr}")
    text = out.stdout + out.stderr
    grab = lambda pattern: float(re.search(pattern, text).group(1))
    return {
        "blocked": grab(r"blocked ([0-9.]+) queries/s"),
        "scalar": grab(r"scalar ([0-9.]+) queries/s"),
        "hamming": grab(r"hamming .*: ([0-9.]+) queries/s"),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--bits", type=int, default=256)
    p.add_argument("--manifest-path", default=os.path.join(os.path.dirname(__file__), "..", "Cargo.toml"))
    args = p.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np  # after the thread variables, which BLAS reads at load time

    rng = np.random.default_rng(0)
    database = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    start = time.perf_counter()
    numpy_exact(np, database, queries, args.k)
    np_exact = args.queries / (time.perf_counter() - start)

    codes = rng.integers(0, 256, size=(args.n, args.bits // 8), dtype=np.uint8)
    hq = min(args.queries, args.n)
    start = time.perf_counter()
    found = numpy_hamming(np, codes, hq, args.k)
    np_hamming = hq / (time.perf_counter() - start)
    assert (found[:, 0] == np.arange(len(found))).all()

    o = ours(args)
    print(f"exact kNN, n={args.n} dim={args.dim} queries={args.queries} k={args.k}, {args.threads} threads")
    print(f"  ours blocked gemm   {o['blocked']:10.1f} queries/s")
    print(f"  ours scalar (f64)   {o['scalar']:10.1f} queries/s   blocked/scalar {o['blocked'] / o['scalar']:.1f}x")
    print(f"  numpy + BLAS        {np_exact:10.1f} queries/s   ours/numpy {o['blocked'] / np_exact:.2f}")
    print(f"hamming kNN, n={args.n} bits={args.bits} k={args.k}")
    print(f"  ours popcount       {o['hamming']:10.1f} queries/s")
    print(f"  numpy bitwise_count {np_hamming:10.1f} queries/s   ours/numpy {o['hamming'] / np_hamming:.2f}")


if __name__ == "__main__":
    main()
