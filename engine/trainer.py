"""The epoch loop of both fine-tuning stages: AdamW, cosine schedule with warm-up, checkpoints, resume."""
from __future__ import annotations

import math
import random
import time
from typing import Callable, Optional

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from glora.errors import UserError
from glora.io import tuples

from . import distributed
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .loops import train_step
from .run import Stage, log, rng_state, seed_noise, set_rng_state


def adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Optimizer:
    """timm's AdamW (no weight decay on biases and other 1-D parameters); on CUDA the fused
    kernel, one launch a step where the default launches several per group of tensors."""
    fused = {"fused": True} if device.type == "cuda" else {}
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, **fused)


class Trainer:
    """Trains `model`'s trainable parameters on `loader` as the stage's config section says.

    `section` holds epochs, lr, weight_decay, warmup_epochs, warmup_lr, min_lr, ckpt_every;
    `validate()` returns scalars to log every `eval_every` epochs and at the end;
    `sampler` is the generator the supernet draws its subnets from (saved for exact resume).
    """

    def __init__(self, stage: Stage, model: nn.Module, loader, section: dict,
                 validate: Optional[Callable[[], dict]] = None, eval_every: int = 0,
                 sampler: Optional[random.Random] = None, amp: bool = True):
        self.stage, self.model, self.loader, self.section = stage, model, loader, section
        self.validate, self.eval_every, self.sampler, self.amp = validate, eval_every, sampler, amp
        self.epochs = int(section["epochs"])
        self.net = model  # what the loop calls: the model itself, or its DDP wrapper under torchrun
        if distributed.world_size() > 1:
            # Layers whose config leaves some storage unused in a step leave DDP gradients to find.
            ids = [stage.device] if stage.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        self.optimizer = adamw(model, section["lr"], section["weight_decay"], stage.device)
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.epochs, lr_min=section["min_lr"],
            warmup_t=section["warmup_epochs"], warmup_lr_init=section["warmup_lr"],
        )
        self.epoch = 0
        self.train_seconds = 0.0
        self.ckpt_dir = stage.dir / "checkpoint"

    def state(self) -> dict:
        """The loop's state; collective under torchrun (it gathers every rank's generator states)."""
        state = {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": distributed.all_gather(rng_state(self.stage.device)),  # one per rank
            "train_seconds": self.train_seconds,
        }
        if self.sampler is not None:
            state["sampler"] = self.sampler.getstate()
        return state

    def start(self) -> None:
        """With --resume continue from the last checkpoint; otherwise start afresh (and say so)."""
        seed_noise(int(self.stage.cfg["seed"]))
        if self.stage.resume:
            self.restore()
        elif find_checkpoint(self.ckpt_dir) is not None:
            log.info("starting afresh: the checkpoint in %s will be replaced (use --resume to continue it)",
                     self.ckpt_dir)
        self.stage.begin()

    def restore(self) -> bool:
        """Continue from the last checkpoint, if there is one; returns whether it did."""
        folder = find_checkpoint(self.ckpt_dir)
        if folder is None:
            log.info("no checkpoint in %s: starting from epoch 0", self.ckpt_dir)
            return False
        state = load_checkpoint(folder, self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        self._restore_rng(state["rng"])
        if self.sampler is not None:
            self.sampler.setstate(tuples(state["sampler"]))
        self.epoch, self.train_seconds = int(state["epoch"]), float(state["train_seconds"])
        log.info("resumed from %s at epoch %d", folder, self.epoch)
        return True

    def _restore_rng(self, states) -> None:
        """This rank's generator states; a checkpoint of another world size cannot replay them."""
        states = [states] if isinstance(states, dict) else states
        if len(states) == distributed.world_size():
            set_rng_state(states[distributed.rank()], self.stage.device)
        else:
            log.warning("checkpoint written by %d process(es), resumed on %d: the run goes on, but the "
                        "drop-path/dropout noise is drawn afresh (not bit-exact with an uninterrupted run)",
                        len(states), distributed.world_size())

    def fit(self) -> dict:
        writer, device = self.stage.writer, self.stage.device
        metrics: dict = {}
        bar = tqdm(range(self.epoch, self.epochs), desc=self.stage.name, initial=self.epoch, total=self.epochs,
                   disable=not self.stage.main)
        for epoch in bar:
            start = time.perf_counter()
            self.scheduler.step(epoch)
            self.model.train()
            total, batches = torch.zeros((), device=device), 0
            for x, y in self.loader:
                total += train_step(self.net, distributed.shard(x), distributed.shard(y), self.optimizer,
                                    device, self.amp)
                batches += 1
            loss = distributed.mean(total).item() / max(batches, 1)
            if not math.isfinite(loss):
                raise UserError(f"training diverged (loss {loss}) at epoch {epoch}: lower {self.stage.name}.lr")
            self.train_seconds += time.perf_counter() - start
            self.epoch = epoch + 1
            lr = self.optimizer.param_groups[0]["lr"]
            writer.add_scalar("train/loss", loss, self.epoch)
            writer.add_scalar("opt/lr", lr, self.epoch)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            last = self.epoch == self.epochs
            if self.validate is not None and (last or (self.eval_every and self.epoch % self.eval_every == 0)):
                metrics = self.validate()
                for k, v in metrics.items():
                    writer.add_scalar(k, v, self.epoch)
                log.info("epoch %d: loss %.4f, %s", self.epoch, loss,
                         ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            if last or self.epoch % int(self.section["ckpt_every"]) == 0:
                state = self.state()
                if self.stage.main:
                    save_checkpoint(self.ckpt_dir, self.model, state)
                distributed.barrier()
        if not metrics and self.validate is not None:  # resumed after the last epoch: report anyway
            metrics = self.validate()
        writer.flush()
        return metrics
