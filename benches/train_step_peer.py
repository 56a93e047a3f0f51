#!/usr/bin/env python3
"""Training-step throughput: our candle AlexNet vs the same network in PyTorch 2.x, side by side.

    python3 benches/train_step_peer.py [--threads 2] [--rounds 3] [--manifest-path Cargo.toml]
                                       [--cases 0.25:64:128:10:5,1:224:32:1000:3]
                                       [--modes eager,channels_last,compile] [--no-layers]
                                       [--builtin] [--baseline-bin PATH]

Each case is width:input:batch:classes:steps. One step = forward (train mode: dropout on)
+ mean cross-entropy + backward + the paper's SGD update (v <- 0.9 v - 0.0005 lr w - lr g;
w <- w + v), f32 on the CPU, timed after one warm-up step.

- Ours is the bench target `train_step` (benches/train_step.rs), built once through
  `cargo bench --no-run` and then run directly, with RAYON_NUM_THREADS = --threads. Its
  convolutions and fc products run on oneDNN where libdnnl2 is installed (the output's
  `ours: matmul:` line says); `--builtin` also times it with PIPELINE_ONEDNN=off (our own
  im2col + gemm kernels) in the same rounds.
- PyTorch: the `python3` running this script if it imports torch >= 2, else a venv under
  target/bench-python with torch from PyPI (made once). Modes: eager, channels_last
  (NHWC memory format) and torch.compile (compiled once per case, before the rounds);
  "best torch" is the fastest mode of each round. torch.set_num_threads(--threads).
  Debian's python3-torch 1.x through /usr/bin/python3 runs too (eager) where installed.
- Rounds are interleaved (ours, torch, ours, torch, ...) so that load on a shared
  machine hits both sides alike; the table shows the median and the spread (min-max).
- Per layer (AlexNet at full size, batch 32): forward and backward for both sides, ours
  from the bench target `ops` (benches/ops.rs), torch's from the same layers here.
- `--baseline-bin` adds a second build of our `train_step` (say, the tree before a change)
  as a third contestant in the same interleaved rounds.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
VENV = os.path.join(ROOT, "target", "bench-python")
DEBIAN_PYTHON = "/usr/bin/python3"


def torch_version_ok():
    try:
        import torch
    except ImportError:
        return False
    return int(torch.__version__.split(".")[0]) >= 2


def ensure_torch2():
    """Re-executes this script under a Python whose torch is >= 2 (a venv made once)."""
    if torch_version_ok():
        return
    py = os.path.join(VENV, "bin", "python3")
    if not os.path.exists(py):
        print(f"python3 ({sys.executable}) has no torch >= 2: making {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "--quiet", "torch"], check=True)
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


# ---------------------------------------------------------------------------------------
# The network in PyTorch (the same layers, sizes and init as src/model/alexnet.rs)


def build_torch():
    import torch.nn as nn
    import torch.nn.functional as F

    def channels(base, width, groups):
        return max(1, round(base * width / groups)) * groups

    class AlexNet(nn.Module):
        def __init__(self, width, input_size, classes, groups=2):
            super().__init__()
            c = [channels(b, width, groups) for b in (96, 256, 384, 384, 256)]
            hidden = max(1, round(4096 * width))
            self.conv1 = nn.Conv2d(3, c[0], 11, stride=4, padding=2)
            self.conv2 = nn.Conv2d(c[0], c[1], 5, padding=2, groups=groups)
            self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1)
            self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1, groups=groups)
            self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1, groups=groups)
            self.lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # paper alpha 1e-4 * n
            self.pool = nn.MaxPool2d(3, 2)
            s = (input_size + 4 - 11) // 4 + 1
            for _ in range(3):
                s = (s - 3) // 2 + 1
            self.fc6 = nn.Linear(c[4] * s * s, hidden)
            self.fc7 = nn.Linear(hidden, hidden)
            self.fc8 = nn.Linear(hidden, classes)
            self.drop = nn.Dropout(0.5)
            import torch

            with torch.no_grad():  # paper init
                for name, p in self.named_parameters():
                    if name.endswith("weight"):
                        p.normal_(0.0, 0.01)
                    else:
                        p.fill_(1.0 if name.split(".")[0] in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)

        def forward(self, x):
            import torch

            x = self.pool(self.lrn(F.relu(self.conv1(x))))
            x = self.pool(self.lrn(F.relu(self.conv2(x))))
            x = F.relu(self.conv3(x))
            x = F.relu(self.conv4(x))
            x = self.pool(F.relu(self.conv5(x)))
            x = torch.flatten(x, 1)
            x = self.drop(F.relu(self.fc6(x)))
            x = self.drop(F.relu(self.fc7(x)))
            return self.fc8(x)

    return AlexNet


class TorchCase:
    """One (case, mode): the model, its velocities and inputs, built (and compiled) once."""

    def __init__(self, case, mode):
        import torch
        import torch.nn.functional as F

        width, input_size, batch, classes, steps = case
        torch.manual_seed(0)
        model = build_torch()(width, input_size, classes).train()
        x = torch.rand(batch, 3, input_size, input_size) * 255.0 - 128.0
        if mode == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.params = list(model.named_parameters())
        self.vel = [torch.zeros_like(p) for _, p in self.params]
        self.model, self.x, self.y = model, x, torch.arange(batch) % classes
        self.batch, self.steps = batch, steps
        fwd = torch.compile(model) if mode == "compile" else model
        self.loss = lambda: F.cross_entropy(fwd(self.x), self.y)
        if mode == "compile":
            t = time.perf_counter()
            self.step()  # compiles forward and backward
            print(f"  torch.compile of case {case_name(case)}: {time.perf_counter() - t:.0f}s", flush=True)

    def step(self):
        import torch

        loss = self.loss()
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        lr = 0.01
        with torch.no_grad():
            for (name, p), v in zip(self.params, self.vel):
                wd = 0.0005 if name.endswith("weight") else 0.0
                v.mul_(0.9).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)

    def images_per_s(self):
        self.step()  # warm-up
        t = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        return self.batch * self.steps / (time.perf_counter() - t)


def torch_blas():
    import torch

    cfg = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", cfg)
    isa = re.search(r"CPU capability usage: (\w+)", cfg)
    mkldnn = torch.backends.mkldnn.is_available()
    return (
        f"torch {torch.__version__}: BLAS {blas.group(1) if blas else '?'}, "
        f"oneDNN {'on' if mkldnn else 'off'}, CPU capability {isa.group(1) if isa else '?'}"
    )


# ---------------------------------------------------------------------------------------
# Per-layer timings in PyTorch, the layers and sizes of benches/ops.rs (full size, batch 32)


def torch_layers(threads, rounds):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    b = 32
    conv = lambda *a, **k: nn.Conv2d(*a, **k)
    layers = [
        ("conv1", conv(3, 96, 11, stride=4, padding=2), (b, 3, 224, 224), False, True),
        ("lrn1", nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0), (b, 96, 55, 55), True, False),
        ("pool1", nn.MaxPool2d(3, 2), (b, 96, 55, 55), True, False),
        ("conv2", conv(96, 256, 5, padding=2, groups=2), (b, 96, 27, 27), True, True),
        ("conv3", conv(256, 384, 3, padding=1), (b, 256, 13, 13), True, True),
        ("conv4", conv(384, 384, 3, padding=1, groups=2), (b, 384, 13, 13), True, True),
        ("conv5", conv(384, 256, 3, padding=1, groups=2), (b, 384, 13, 13), True, True),
        ("fc6", nn.Linear(9216, 4096), (b, 9216), True, True),
        ("fc7", nn.Linear(4096, 4096), (b, 4096), True, True),
        ("fc8", nn.Linear(4096, 1000), (b, 4096), True, False),
    ]
    out = {}
    for name, mod, shape, input_grad, relu in layers:
        x = torch.rand(shape) * 2 - 1
        x.requires_grad_(input_grad)
        f = (lambda m, r: (lambda x: F.relu(m(x)) if r else m(x)))(mod, relu)
        g = torch.rand(f(x).shape)
        fw, bw = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            y = f(x)
            t1 = time.perf_counter()
            (y * g).sum().backward()
            t2 = time.perf_counter()
            fw.append(t1 - t)
            bw.append(t2 - t1)
            mod.zero_grad(set_to_none=True)
            x.grad = None
        out[name] = (min(fw), min(bw))
    return out


# ---------------------------------------------------------------------------------------
# Ours


def cargo_build(manifest):
    """Builds the bench targets once; returns {name: executable}."""
    cmd = ["cargo", "bench", "--manifest-path", manifest, "--no-run", "--message-format=json",
           "--bench", "train_step", "--bench", "ops"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cargo failed:\n{out.stderr}")
    exes = {}
    for line in out.stdout.splitlines():
        m = json.loads(line)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
            exes[m["target"]["name"]] = m["executable"]
    return exes


def ours_round(exe, cases, threads, extra_env=None):
    env = dict(os.environ, TRAIN_STEP_CASES=cases, RAYON_NUM_THREADS=str(threads), **(extra_env or {}))
    out = subprocess.run([exe], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{exe} failed:\n{out.stdout}\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("candle ")]
    blas = [l for l in out.stdout.splitlines() if l.startswith("matmul:")]
    return [float(re.search(r": ([0-9.]+) images/s", l).group(1)) for l in lines], lines, blas


def ours_layers(exe, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([exe], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{exe} failed:\n{out.stdout}\n{out.stderr}")
    res = {}
    for l in out.stdout.splitlines():
        m = re.match(r"layer (\w+) forward ([0-9.]+)s backward ([0-9.]+)s", l)
        if m:
            res[m.group(1)] = (float(m.group(2)), float(m.group(3)))
        # An older ops bench (conv layers only): "conv1: forward ours F ... forward+backward ours FB".
        m = re.match(r"(conv\d): forward ours ([0-9.]+)s .*forward\+backward ours ([0-9.]+)s", l)
        if m:
            res[m.group(1)] = (float(m.group(2)), float(m.group(3)) - float(m.group(2)))
    return res


# ---------------------------------------------------------------------------------------
# Debian's torch 1.x (eager) through /usr/bin/python3, one round per call


def debian_torch_available():
    if not os.path.exists(DEBIAN_PYTHON):
        return None
    probe = "import torch, sys; sys.stdout.write(torch.__version__)"
    r = subprocess.run([DEBIAN_PYTHON, "-I", "-c", probe], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def debian_round(cases, threads):
    cmd = [DEBIAN_PYTHON, "-I", os.path.abspath(__file__), "--worker", "--threads", str(threads),
           "--cases", cases]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"Debian torch worker failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def worker(args):
    import torch

    torch.set_num_threads(args.threads)
    cases = parse_cases(args.cases)
    print(json.dumps({"blas": torch_blas(), "img_s": [TorchCase(c, "eager").images_per_s() for c in cases]}))


# ---------------------------------------------------------------------------------------


def parse_cases(s):
    return [tuple(float(v) if i == 0 else int(v) for i, v in enumerate(c.split(":"))) for c in s.split(",")]


def case_name(c):
    return f"w{c[0]:g} in{c[1]} b{c[2]} cls{c[3]}"


def med_spread(v):
    return f"{statistics.median(v):8.1f} ({min(v):.1f}-{max(v):.1f})"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "?"
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = re.search(r"flags\s*:\s*(.*)", info)
    avx512 = flags and "avx512f" in flags.group(1).split()
    return f"{name.group(1) if name else '?'}, {os.cpu_count()} logical CPUs, AVX-512 {'yes' if avx512 else 'no'}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="0.25:64:128:10:5,1:224:32:1000:3")
    ap.add_argument("--modes", default="eager,channels_last,compile")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--builtin", action="store_true",
                    help="also time ours with PIPELINE_ONEDNN=off (the built-in CPU kernels) in the same rounds")
    ap.add_argument("--baseline-bin", help="another build of the train_step bench, timed alongside")
    ap.add_argument("--manifest-path", default=os.path.join(ROOT, "Cargo.toml"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    ensure_torch2()
    import torch

    torch.set_num_threads(args.threads)
    cases = parse_cases(args.cases)
    modes = args.modes.split(",")
    print(f"machine: {cpu_model()}; threads {args.threads} (RAYON_NUM_THREADS = torch.set_num_threads)")
    print(f"torch: {torch_blas()}", flush=True)
    exes = cargo_build(args.manifest_path)
    debian = debian_torch_available()
    if debian:
        print(f"Debian torch {debian} via {DEBIAN_PYTHON}: included (eager)")
    else:
        print(f"Debian torch via {DEBIAN_PYTHON}: skipped (python3-torch is not installed)")
    peers = {m: [TorchCase(c, m) for c in cases] for m in modes}
    builtin = "ours, built-in kernels"
    names = ["ours"] + ([builtin] if args.builtin else []) + (["ours-baseline"] if args.baseline_bin else [])
    names += [f"torch {m}" for m in modes]
    names += [f"torch {debian} (Debian) eager"] if debian else []
    res = {n: [[] for _ in cases] for n in names}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        v, lines, blas = ours_round(exes["train_step"], args.cases, args.threads)
        if r == 0:
            for l in blas:
                print(f"ours: {l}")
        for l in lines:
            print(f"  ours: {l}")
        for i, x in enumerate(v):
            res["ours"][i].append(x)
        if args.builtin:
            v, lines, _ = ours_round(exes["train_step"], args.cases, args.threads, {"PIPELINE_ONEDNN": "off"})
            for i, x in enumerate(v):
                res[builtin][i].append(x)
            for l in lines:
                print(f"  built-in: {l}")
        if args.baseline_bin:
            v, lines, _ = ours_round(args.baseline_bin, args.cases, args.threads)
            for i, x in enumerate(v):
                res["ours-baseline"][i].append(x)
            for l in lines:
                print(f"  baseline: {l}")
        for m in modes:
            for i, p in enumerate(peers[m]):
                x = p.images_per_s()
                res[f"torch {m}"][i].append(x)
                print(f"  torch {m} {case_name(cases[i])}: {x:.1f} images/s", flush=True)
        if debian:
            d = debian_round(args.cases, args.threads)
            if r == 0:
                print(f"Debian {d['blas']}")
            for i, x in enumerate(d["img_s"]):
                res[names[-1]][i].append(x)
    # Best torch per round: the fastest PyTorch 2 mode of that round.
    best = [[max(res[f"torch {m}"][i][r] for m in modes) for r in range(args.rounds)] for i in range(len(cases))]
    print(f"\nimages/s, median (min-max) of {args.rounds} interleaved rounds")
    print(f"{'':34}" + "".join(f"{case_name(c):>28}" for c in cases))
    for n in names:
        print(f"{n:34}" + "".join(f"{med_spread(res[n][i]):>28}" for i in range(len(cases))))
    print(f"{'best torch 2 (per round)':34}" + "".join(f"{med_spread(best[i]):>28}" for i in range(len(cases))))
    for i, c in enumerate(cases):
        ratios = [a / b for a, b in zip(res["ours"][i], best[i])]
        print(f"{case_name(c)}: ours / best torch = {statistics.median(ratios):.2f} "
              f"(per round {', '.join(f'{x:.2f}' for x in ratios)})")
        if args.builtin:
            ratios = [a / b for a, b in zip(res[builtin][i], best[i])]
            print(f"{case_name(c)}: built-in kernels / best torch = {statistics.median(ratios):.2f}")
        if args.baseline_bin:
            ratios = [a / b for a, b in zip(res["ours-baseline"][i], best[i])]
            print(f"{case_name(c)}: baseline / best torch = {statistics.median(ratios):.2f}")
    if args.no_layers:
        return
    print("\nper layer, AlexNet full size, batch 32, ms (best of 3): forward / backward", flush=True)
    ours = ours_layers(exes["ops"], args.threads)
    base = ours_layers(args.baseline_bin.replace("train_step", "ops"), args.threads) if args.baseline_bin else {}
    theirs = torch_layers(args.threads, 3)
    head = f"{'layer':8}{'ours':>18}" + (f"{'baseline':>18}" if base else "") + f"{'torch eager':>18}{'ours/torch f+b':>16}"
    print(head)
    for name, (tf, tb) in theirs.items():
        of, ob = ours.get(name, (float("nan"),) * 2)
        row = f"{name:8}{of * 1e3:8.1f} /{ob * 1e3:8.1f}"
        if base:
            bf, bb = base.get(name, (float("nan"),) * 2)
            row += f"{bf * 1e3:8.1f} /{bb * 1e3:8.1f}"
        row += f"{tf * 1e3:8.1f} /{tb * 1e3:8.1f}{(of + ob) / (tf + tb):16.2f}"
        print(row)


if __name__ == "__main__":
    main()
