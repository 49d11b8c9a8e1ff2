"""Pretrain the demo's tiny ViT without labels, so that the demo fine-tunes a pretrained backbone.

No weights can be downloaded offline, so the demo makes its own: self-supervised rotation
prediction (which of 0/90/180/270 degrees; Gidaris et al., 2018) on the demo task's train800
images, labels unused. The result is an ordinary timm state dict (safetensors) that the demo
config loads through `model.pretrained`, as a real run loads ViT-B_16.npz.
Usage: python scripts/demo_backbone.py configs/demo.yaml OUT.safetensors [--epochs 8]
"""
import argparse
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import load_config, validate_config
from data import normalize
from engine.experiment import load_data
from glora.io import save_tensors


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    if args.out.is_file():
        print(f"{args.out} exists; delete it to pretrain again")
        return
    cfg = load_config(args.config)
    validate_config(cfg)
    torch.manual_seed(cfg["seed"])
    d = cfg["data"]
    images = normalize(load_data(cfg, "train800").images[:], d["mean"], d["std"])  # the demo's small split, whole
    x = torch.cat([torch.rot90(images, k, (2, 3)) for k in range(4)])
    y = torch.arange(4).repeat_interleave(len(images))
    model = timm.create_model(cfg["model"]["name"], num_classes=4, **(cfg["model"]["kwargs"] or {}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()
    for epoch in range(args.epochs):
        order, total = torch.randperm(len(y)), 0.0
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"rotation pretraining epoch {epoch + 1}/{args.epochs}: loss {total / len(y):.4f}", flush=True)
    save_tensors(args.out, model.state_dict(), {"format": "pt"})
    print(f"backbone written to {args.out}")


if __name__ == "__main__":
    main()
