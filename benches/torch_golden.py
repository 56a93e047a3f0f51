#!/usr/bin/python3
"""Golden fixtures for tests/model_golden.rs: the same AlexNet in PyTorch.

Run with Debian's python (torch 1.13 CPU):  /usr/bin/python3 benches/torch_golden.py

Builds the paper's topology (grouped convs, LRN, overlapping max-pool) at a reduced
width (0.0625: conv maps 6-16-24-24-16, fc 256) on 95x95 inputs — the smallest side
for which conv5's pool is 2x2, so the flatten order is exercised — with 10 classes and
a batch of 4. Weights come from a seeded numpy generator (float32, so the Rust side
loads exactly the same values); the PyTorch computation runs in float64. Dropout is
off (eval forward), gradients of the mean cross-entropy are taken, then two steps of
the paper's SGD rule are applied by hand:

    v <- 0.9 v - 0.0005 lr w - lr g ;  w <- w + v      (lr 0.01; no decay on biases)

Writes tests/fixtures/golden/alexnet_w0.0625_s95.safetensors (~1.6 MB):
  input (4,3,95,95) f32, labels (4,) i64, logits (4,10) f32, loss () f32,
  weight.<p> f32 (initial), grad.<p> f32 (at the initial weights),
  delta2.<p> f32 = weights after two SGD steps minus initial weights (stored as the
  difference so the f32 file keeps the update's precision),
  logits2 (4,10) f32: logits after the two steps.
PyTorch's LocalResponseNorm divides alpha by n, so the paper's alpha = 1e-4 is 5e-4 here.
"""
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTH, GROUPS, INPUT, CLASSES, BATCH = 0.0625, 2, 95, 10, 4
LR, MOMENTUM, WD, STEPS = 0.01, 0.9, 0.0005, 2
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "golden")
NAME = "alexnet_w0.0625_s95.safetensors"


def conv_channels(base):
    # Same rounding as src/model/alexnet.rs: a multiple of GROUPS, at least GROUPS.
    return max(1, round(base * WIDTH / GROUPS)) * GROUPS


C = [conv_channels(b) for b in (96, 256, 384, 384, 256)]
HIDDEN = max(1, round(4096 * WIDTH))


class AlexNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, C[0], 11, stride=4, padding=2)
        self.conv2 = nn.Conv2d(C[0], C[1], 5, padding=2, groups=GROUPS)
        self.conv3 = nn.Conv2d(C[1], C[2], 3, padding=1)
        self.conv4 = nn.Conv2d(C[2], C[3], 3, padding=1, groups=GROUPS)
        self.conv5 = nn.Conv2d(C[3], C[4], 3, padding=1, groups=GROUPS)
        self.lrn = nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)
        self.pool = nn.MaxPool2d(3, 2)
        side = self.spatial(INPUT)
        self.fc6 = nn.Linear(C[4] * side * side, HIDDEN)
        self.fc7 = nn.Linear(HIDDEN, HIDDEN)
        self.fc8 = nn.Linear(HIDDEN, CLASSES)

    @staticmethod
    def spatial(s):
        s = (s + 4 - 11) // 4 + 1  # conv1
        for _ in range(3):  # pool1, pool2, pool5 (conv2-5 keep the side)
            s = (s - 3) // 2 + 1
        return s

    def forward(self, x):
        x = self.pool(self.lrn(F.relu(self.conv1(x))))
        x = self.pool(self.lrn(F.relu(self.conv2(x))))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc6(x))  # dropout off
        x = F.relu(self.fc7(x))
        return self.fc8(x)


PARAMS = [f"{l}.{k}" for l in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8") for k in ("weight", "bias")]


def draw_weights(model, rng):
    """He-scaled Gaussian weights (keeps activations O(input) so LRN's denominator and
    the pools' argmaxes matter), small fc8 so the softmax is not saturated, random
    biases so every bias gradient is exercised. float32 values."""
    out = {}
    for name in PARAMS:
        p = dict(model.named_parameters())[name]
        shape = tuple(p.shape)
        if name.endswith("weight"):
            fan_in = int(np.prod(shape[1:]))
            std = np.sqrt(2.0 / fan_in) * (0.05 if name.startswith("fc8") else 1.0)
            v = rng.normal(0.0, std, size=shape)
        else:
            v = rng.normal(0.0, 0.1, size=shape)
        out[name] = v.astype(np.float32)
    return out


def write_safetensors(path, tensors, metadata):
    dt = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("int64"): "I64"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dt[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(20120101)
    model = AlexNet().double()
    w0 = draw_weights(model, rng)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(w0[name].astype(np.float64)))
    # Centred raw RGB, like the paper's inputs: pixel values minus the mean, ~[-128, 128).
    x32 = rng.uniform(-128.0, 128.0, size=(BATCH, 3, INPUT, INPUT)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int64)
    x = torch.from_numpy(x32.astype(np.float64))
    y = torch.from_numpy(labels)

    model.eval()  # no dropout in the model anyway; eval documents the intent
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}

    # Diagnostics: is the fixture sensitive to the parts under test?
    with torch.no_grad():
        a = F.relu(model.conv1(x))
        s = F.avg_pool3d(a.pow(2).unsqueeze(1), (5, 1, 1), stride=1, padding=(2, 0, 0)).squeeze(1) * 5
        ratio = (1e-4 * s / 2.0)
        print(f"conv1 act std {a.std():.2f}; alpha*sum/k: mean {ratio.mean():.3f} max {ratio.max():.3f}")
        print(f"logits std {logits.std():.3f}; loss {loss.item():.5f}")
        print(f"softmax max per row {F.softmax(logits, 1).max(1).values.numpy()}")

    # Two steps of the paper's rule, by hand (weights decayed, biases not).
    params = dict(model.named_parameters())
    vel = {n: torch.zeros_like(p) for n, p in params.items()}
    for step in range(STEPS):
        if step > 0:
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for n, p in params.items():
                wd = WD if n.endswith("weight") else 0.0
                vel[n] = MOMENTUM * vel[n] - wd * LR * p - LR * p.grad
                p.add_(vel[n])
    with torch.no_grad():
        logits2 = model(x)

    t = {
        "input": x32,
        "labels": labels,
        "logits": logits.detach().numpy().astype(np.float32),
        "loss": np.array(loss.item(), dtype=np.float32),
        "logits2": logits2.numpy().astype(np.float32),
    }
    for n in PARAMS:
        t[f"weight.{n}"] = w0[n]
        t[f"grad.{n}"] = grads[n].astype(np.float32)
        t[f"delta2.{n}"] = (params[n].detach().numpy() - w0[n].astype(np.float64)).astype(np.float32)
    meta = {
        "width": str(WIDTH), "groups": str(GROUPS), "input_size": str(INPUT), "num_classes": str(CLASSES),
        "batch": str(BATCH), "lr": str(LR), "momentum": str(MOMENTUM), "weight_decay": str(WD),
        "steps": str(STEPS), "torch": torch.__version__, "lrn": "size=5 alpha=5e-4 beta=0.75 k=2",
    }
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, NAME)
    write_safetensors(path, t, meta)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
