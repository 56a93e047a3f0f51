"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) as `pipeline export --format torch` wrote it.

Self-contained: PyTorch and this folder are all it needs (`safetensors` to read the
weights, numpy and Pillow only for `preprocess`). The folder holds

    model.safetensors   the weights, PyTorch's parameter names and layouts (conv1.weight ...)
    config.json         the network: every layer's channels, kernel, stride, padding, groups
    classes.json        class index -> wnid, name
    mean.npy            the dataset's mean image (3, S, S), subtracted from every input
    sample_input.npy    (with --with-sample) inputs the exporting run saw, (N, 3, C, C) float32
    sample_logits.npy   and its logits for them, (N, classes) float32

    import alexnet, numpy as np, torch
    model = alexnet.load()                      # this folder; eval mode
    x = torch.from_numpy(np.load("sample_input.npy"))
    print((model(x) - torch.from_numpy(np.load("sample_logits.npy"))).abs().max())

or by hand: `model = alexnet.AlexNet(config); model.load_state_dict(
safetensors.torch.load_file("model.safetensors"))`.

Inputs are raw RGB values (0..255) minus the mean image, channels first: the paper's
inputs, no scaling to [0, 1] and no per-channel standardisation.
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class AlexNet(nn.Module):
    """Paper §3 / Figure 2: conv1 → LRN → pool, conv2 (grouped) → LRN → pool, conv3,
    conv4 and conv5 (grouped) → pool, fc6 and fc7 with dropout, fc8."""

    def __init__(self, config):
        super().__init__()
        for c in config["convs"]:
            conv = nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel"],
                             stride=c["stride"], padding=c["padding"], groups=c["groups"])
            setattr(self, c["name"], conv)
        lrn = config["lrn"]
        # The paper's alpha multiplies the sum of squares; PyTorch's divides it by size first.
        self.lrn = nn.LocalResponseNorm(size=lrn["size"], alpha=lrn["alpha"] * lrn["size"],
                                        beta=lrn["beta"], k=lrn["k"])
        self.pool = nn.MaxPool2d(config["pool"]["size"], config["pool"]["stride"])
        self.dropout = nn.Dropout(config["dropout"])
        for f in config["fcs"]:
            setattr(self, f["name"], nn.Linear(f["in_features"], f["out_features"]))

    def forward(self, x):
        x = self.pool(self.lrn(F.relu(self.conv1(x))))
        x = self.pool(self.lrn(F.relu(self.conv2(x))))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc6(x))
        x = F.relu(self.fc7(self.dropout(x)))
        return self.fc8(self.dropout(x))


def config(folder=HERE):
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def classes(folder=HERE):
    """[{"index", "wnid", "name"}, ...] in class-index order."""
    with open(os.path.join(folder, "classes.json")) as f:
        return json.load(f)


def load(folder=HERE, device="cpu"):
    """The exported network with its weights, in eval mode (no dropout)."""
    from safetensors.torch import load_file

    model = AlexNet(config(folder))
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return model.to(device).eval()


def preprocess(path, folder=HERE):
    """One image file as the network's input (1, 3, C, C): the shorter side resized to S
    (Pillow's bilinear), the centre S×S, then its centre C×C minus the mean image.
    The pipeline's own resize matches Pillow's to a mean absolute difference of 2/255."""
    import numpy as np
    from PIL import Image

    cfg = config(folder)
    s, c = cfg["image_size"], cfg["input_size"]
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (s, max(s, h * s // w)) if w <= h else (max(s, w * s // h), s)
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - s) // 2, (size[1] - s) // 2
    pixels = np.asarray(image, dtype=np.float32)[top:top + s, left:left + s].transpose(2, 0, 1)
    o = (s - c) // 2
    mean = np.load(os.path.join(folder, "mean.npy"))
    x = pixels[:, o:o + c, o:o + c] - mean[:, o:o + c, o:o + c]
    return torch.from_numpy(np.ascontiguousarray(x))[None]
