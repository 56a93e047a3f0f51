#!/usr/bin/python3
"""Training-step throughput: candle AlexNet vs the same network in PyTorch, side by side.

    /usr/bin/python3 benches/train_step_peer.py [--threads 2] [--manifest-path Cargo.toml]
                                                [--cases 0.25:64:128:10:5,1:224:32:1000:3]

Each case is width:input:batch:classes:steps. One step = forward (train mode: dropout on)
+ mean cross-entropy + backward + the paper's SGD update (v <- 0.9 v - 0.0005 lr w - lr g;
w <- w + v), f32 on the CPU, after one warm-up step. The candle side is the bench target
`train_step` (benches/train_step.rs), run through `cargo bench` with RAYON_NUM_THREADS set
to the same thread count as torch.set_num_threads. Prints images/s for both and the ratio
candle/PyTorch (project target: >= 0.5).
"""
import argparse
import os
import re
import subprocess
import time

import torch
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
        with torch.no_grad():  # paper init
            for name, p in self.named_parameters():
                if name.endswith("weight"):
                    p.normal_(0.0, 0.01)
                else:
                    p.fill_(1.0 if name.split(".")[0] in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)

    def forward(self, x):
        x = self.pool(self.lrn(F.relu(self.conv1(x))))
        x = self.pool(self.lrn(F.relu(self.conv2(x))))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.fc6(x)))
        x = self.drop(F.relu(self.fc7(x)))
        return self.fc8(x)


def torch_case(width, input_size, batch, classes, steps):
    torch.manual_seed(0)
    model = AlexNet(width, input_size, classes).train()
    params = list(model.named_parameters())
    vel = [torch.zeros_like(p) for _, p in params]
    x = torch.rand(batch, 3, input_size, input_size) * 255.0 - 128.0
    y = torch.arange(batch) % classes
    lr, t = 0.01, {"fwd": 0.0, "bwd": 0.0, "sgd": 0.0}
    for s in range(steps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        with torch.no_grad():
            for (name, p), v in zip(params, vel):
                wd = 0.0005 if name.endswith("weight") else 0.0
                v.mul_(0.9).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)
        t3 = time.perf_counter()
        if s > 0:
            t["fwd"] += t1 - t0
            t["bwd"] += t2 - t1
            t["sgd"] += t3 - t2
    per = sum(t.values()) / steps
    print(f"torch  width={width} input={input_size} batch={batch} classes={classes}: {batch / per:.1f} images/s "
          f"(per step {per:.3f}s: forward {t['fwd'] / steps:.3f}s, backward {t['bwd'] / steps:.3f}s, "
          f"sgd {t['sgd'] / steps:.3f}s)", flush=True)
    return batch / per


def candle_cases(cases, threads, manifest):
    env = dict(os.environ, TRAIN_STEP_CASES=cases, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "bench", "--manifest-path", manifest, "--bench", "train_step"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cargo failed:\n{out.stdout}\n{out.stderr}")
    lines = [l for l in out.stdout.splitlines() if l.startswith("candle ")]
    for l in lines:
        print(l)
    return [float(re.search(r": ([0-9.]+) images/s", l).group(1)) for l in lines]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="0.25:64:128:10:5,1:224:32:1000:3")
    ap.add_argument("--manifest-path", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Cargo.toml"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = [tuple(float(v) for v in c.split(":")) for c in args.cases.split(",")]
    candle = candle_cases(args.cases, args.threads, args.manifest_path)
    peer = [torch_case(c[0], int(c[1]), int(c[2]), int(c[3]), int(c[4])) for c in cases]
    print(f"\n{'case':28} {'candle img/s':>12} {'torch img/s':>12} {'ratio':>6}")
    for c, a, b in zip(cases, candle, peer):
        name = f"w{c[0]:g} in{int(c[1])} b{int(c[2])} cls{int(c[3])}"
        print(f"{name:28} {a:12.1f} {b:12.1f} {a / b:6.2f}")


if __name__ == "__main__":
    main()
