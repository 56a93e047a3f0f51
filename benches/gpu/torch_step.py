#!/usr/bin/env python3
"""PyTorch + cuDNN training-step throughput of the same AlexNet, the peer of
`pipeline check step --device cuda` (run by benches/gpu/check.sh).

    python3 benches/gpu/torch_step.py [--batch 128] [--steps 20] [--width 1] [--input 224]

The network is benches/train_step_peer.py's (the paper's topology: grouped convs, LRN with
alpha 5e-4 = the paper's 1e-4 * n, overlapping 3/2 pools, dropout 0.5), 1000 classes. One
step = forward (train mode) + mean cross-entropy + backward + the paper's SGD update
(v <- 0.9 v - 0.0005 lr w - lr g; w <- w + v, torch.optim.SGD with momentum 0.9 and
weight decay 5e-4 is the same rule up to where lr multiplies), timed with CUDA syncs
after warm-up steps. Variants, each printed as `torch VARIANT: N images/s`:
  f32          eager, NCHW, TF32 off (the precision of candle's f32 path)
  f32-tf32     eager, TF32 on for cuDNN and matmul (PyTorch's default for convolutions)
  bf16         autocast bf16, channels_last, cudnn.benchmark
  bf16-compile the same under torch.compile (skipped with its reason where it fails)
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from train_step_peer import AlexNet  # noqa: E402


def run(variant, args):
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    tf32 = variant == "f32-tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    bf16 = variant.startswith("bf16")
    model = AlexNet(args.width, args.input, 1000).to(dev)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    x = (torch.rand(args.batch, 3, args.input, args.input, device=dev) * 255 - 128).to(memory_format=fmt)
    y = torch.arange(args.batch, device=dev) % 1000
    step_model = torch.compile(model) if variant == "bf16-compile" else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if variant != "bf16-compile" else 5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    per = (time.perf_counter() - t) / args.steps
    print(f"torch {variant}: {args.batch / per:.1f} images/s (per step {per:.4f}s)", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--input", type=int, default=224)
    p.add_argument("--variants", default="f32,f32-tf32,bf16,bf16-compile")
    args = p.parse_args()
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    for v in args.variants.split(","):
        try:
            run(v, args)
        except Exception as e:  # a variant that cannot run here is reported, not fatal
            print(f"torch {v}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)


if __name__ == "__main__":
    main()
