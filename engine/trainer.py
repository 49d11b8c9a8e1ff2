"""The epoch loop of both fine-tuning stages: AdamW, cosine schedule with warm-up, checkpoints,
resume (also mid-epoch, after a stop signal)."""
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
from glora.merge import first_nonfinite
from glora.optim import MaskedAdamW

from . import distributed, method
from .checkpoint import latest_state, save_checkpoint
from .compile import Compiler, wanted
from .loops import train_step
from .run import Stage, log, rng_state, seed_noise, set_rng_state
from .stop import Stopped


def adamw(model: nn.Module, lr: float, weight_decay: float, device: torch.device,
          flags: Optional[dict] = None) -> torch.optim.Optimizer:
    """timm's AdamW (no weight decay on biases and other 1-D parameters); on CUDA the fused
    kernel, one launch a step where the default launches several per group of tensors. With
    `flags` (a static supernet's, Family.used_flags), MaskedAdamW over the same groups."""
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, **fused)
    return optimizer if flags is None else MaskedAdamW([dict(g) for g in optimizer.param_groups], flags=flags)


class Trainer:
    """Trains `model`'s trainable parameters on `loader` as the stage's config section says.

    `section` names it (train, retrain): epochs, lr, weight_decay, warmup_epochs, warmup_lr, min_lr,
    ckpt_every; `validate()` returns scalars to log every `eval_every` epochs and at the end;
    `sampler` is the generator the supernet draws its subnets from (saved for exact resume).
    A stop signal ends the loop after the current batch, with a checkpoint (engine.stop).

    train.compile (engine.compile) compiles the step where it pays; the supernet then takes its
    static form: before each step the subnet is drawn (from `sampler`, layer by layer in module
    order, as eager layers draw it in their forward) and written into its switch table, and
    MaskedAdamW leaves the storage that subnet does not use untouched. `eval_model` is the
    evaluation forward (compiled with the step, when `validate` is given).
    """

    def __init__(self, stage: Stage, model: nn.Module, loader, section: str,
                 validate: Optional[Callable[[], dict]] = None, eval_every: int = 0,
                 sampler: Optional[random.Random] = None, amp: bool = True):
        self.stage, self.model, self.loader, self.section = stage, model, loader, section
        self.family = method.family(stage.cfg)  # what saves and loads the model's adapters
        self.validate, self.eval_every, self.sampler, self.amp = validate, eval_every, sampler, amp
        c = stage.cfg[section]
        self.epochs, self.ckpt_every = int(c["epochs"]), int(c["ckpt_every"])
        setting = stage.cfg["train"]["compile"]
        if sampler is not None and not self.family.static and wanted(setting, stage.device):
            log.info("note: train.compile=%s: family %s has no static form of its supernet (every subnet would be "
                     "a graph of its own), so its steps run eager", setting, self.family.name)
            setting = False
        self.compiler = Compiler(setting, stage.device, distributed.world_size())
        self.static = self.compiler.enabled and sampler is not None
        if self.static:
            self.family.make_static(model)
        compiled = self.compiler.module(model)
        self.net = compiled  # what the loop calls: the model (compiled), or its DDP wrapper under torchrun
        if distributed.world_size() > 1:
            # Layers whose config leaves some storage unused in a step leave DDP gradients to find.
            ids = [stage.device] if stage.device.type == "cuda" else None
            self.net = DistributedDataParallel(compiled, device_ids=ids, find_unused_parameters=True)
        flags = self.family.used_flags(model) if self.static else None
        self.optimizer = self.compiler.optimizer(adamw(model, c["lr"], c["weight_decay"], stage.device, flags))
        self.eval_model = self.compiler.evaluation(compiled) if validate is not None else model
        # epochs: 0 (a retrain that only evaluates) runs no step; the schedule still needs a length.
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=max(self.epochs, 1), lr_min=c["min_lr"],
            warmup_t=c["warmup_epochs"], warmup_lr_init=c["warmup_lr"],
        )
        self.epoch = 0  # epochs completed
        self.loss_sum = torch.zeros((), device=stage.device)  # this epoch's so far, and its batches
        self.batches = 0
        self.train_seconds = 0.0
        # This process's whole epochs and validations, in seconds (what a projection of a longer run reads).
        self.timings: dict[str, list[float]] = {"epoch_seconds": [], "validation_seconds": []}
        self.ckpt_dir = stage.dir / "checkpoint"

    def state(self) -> dict:
        """The loop's state, also mid-epoch; collective under torchrun (it gathers every rank's
        generator states and loss sums)."""
        state = {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": distributed.all_gather(rng_state(self.stage.device)),  # one per rank
            "loss_sum": distributed.all_gather(self.loss_sum.item()),
            "batches": self.batches,
            "train_seconds": self.train_seconds,
        }
        if self.sampler is not None:
            state["sampler"] = self.sampler.getstate()
        return state

    def start(self) -> int:
        """Seed the noise; with --resume continue from the run's last checkpoint. Returns the epochs
        done, which the stage begins with (`with stage.begin(trainer.start()):`)."""
        seed_noise(int(self.stage.cfg["seed"]))
        if self.stage.resume:
            self.restore()
        self.compiler.prepare(self.optimizer)
        log.info("%s", self.compiler.plan())
        return self.epoch

    def restore(self) -> bool:
        """Continue from the run's last checkpoint, if it has one; returns whether it did."""
        state = latest_state(self.ckpt_dir, self.stage.run, self.model, self.family)
        if state is None:
            log.info("no checkpoint of this run in %s yet: it starts from epoch 0", self.ckpt_dir)
            return False
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.loader.load_state_dict(state["loader"])
        mine = self._own(state["rng"], "the drop-path/dropout noise is drawn afresh")
        if mine is not None:
            set_rng_state(mine, self.stage.device)
        mine = self._own(state["loss_sum"], "this epoch's logged loss counts the other ranks' batches")
        self.loss_sum.fill_(state["loss_sum"][0] if mine is None else mine)
        if self.sampler is not None:
            self.sampler.setstate(tuples(state["sampler"]))
        self.epoch, self.batches, self.train_seconds = int(state["epoch"]), int(state["batches"]), float(state["train_seconds"])
        # in the words of the stop message (engine.stop): the epoch it stopped in, or the last it finished
        where = (f"in epoch {self.epoch + 1} of {self.epochs}, after its batch {self.batches} of {len(self.loader)}"
                 if self.batches else f"after epoch {self.epoch} of {self.epochs}")
        log.info("resumed from the checkpoint of run %s %s", self.stage.run, where)
        return True

    def _own(self, per_rank: list, otherwise: str):
        """This rank's entry of a per-rank list; a checkpoint of another world size cannot replay them."""
        if len(per_rank) == distributed.world_size():
            return per_rank[distributed.rank()]
        log.warning("checkpoint written by %d process(es), resumed on %d: the run goes on, but %s "
                    "(not bit-exact with an uninterrupted run)", len(per_rank), distributed.world_size(), otherwise)
        return None

    def fit(self) -> dict:
        writer, device = self.stage.writer, self.stage.device
        metrics: dict = {}
        bar = tqdm(range(self.epoch, self.epochs), desc=self.stage.name, initial=self.epoch, total=self.epochs,
                   disable=not self.stage.main)
        for epoch in bar:
            start = time.perf_counter()
            self.scheduler.step(epoch)
            self.model.train()
            for x, y in self.loader:
                if self.static:
                    self.family.write_subnet(self.model, self.family.sample_subnet(self.model, self.sampler))
                x, y = distributed.shard(x), distributed.shard(y)
                with self.compiler.tracking("train", x):
                    loss = train_step(self.net, x, y, self.optimizer, device, self.amp)
                self.loss_sum += loss
                self.batches += 1
                if self.stage.stop.requested():  # every rank asks after every batch: all stop after the same one
                    self.train_seconds += time.perf_counter() - start
                    self._checkpoint()
                    raise Stopped(f"{self.stage.stop.received or 'a signal to another rank'} in epoch {epoch + 1} of "
                                  f"{self.epochs}, after its batch {self.batches} of {len(self.loader)} (checkpoint written)")
            loss = distributed.mean(self.loss_sum).item() / max(self.batches, 1)
            if not math.isfinite(loss):
                raise UserError(f"training diverged (loss {loss}) at epoch {epoch + 1}: lower {self.section}.lr")
            self.loss_sum.zero_()
            self.batches = 0
            self.train_seconds += time.perf_counter() - start
            self.timings["epoch_seconds"].append(time.perf_counter() - start)
            self.epoch = epoch + 1
            lr = self.optimizer.param_groups[0]["lr"]
            writer.add_scalar("train/loss", loss, self.epoch)
            writer.add_scalar("opt/lr", lr, self.epoch)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            last = self.epoch == self.epochs
            if self.validate is not None and (last or (self.eval_every and self.epoch % self.eval_every == 0)):
                start = time.perf_counter()
                metrics = self.validate()
                self.timings["validation_seconds"].append(time.perf_counter() - start)
                for k, v in metrics.items():
                    writer.add_scalar(k, v, self.epoch)
                log.info("epoch %d: loss %.4f, %s", self.epoch, loss,
                         ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            if last or self.epoch % self.ckpt_every == 0:
                self._checkpoint()
        if not metrics and self.validate is not None:  # resumed after the last epoch: report anyway
            metrics = self.validate()
        writer.flush()
        if self.compiler.enabled:
            log.info("%s", self.compiler.describe())
        return metrics

    def _checkpoint(self) -> None:
        """Write the run's checkpoint (rank 0), refusing non-finite parameters (every rank: they are equal)."""
        bad = first_nonfinite(self.family.adapter_state(self.model))
        if bad is not None:
            raise UserError(f"training diverged: {bad} holds non-finite values after epoch {self.epoch} (the last "
                            f"good checkpoint is kept): lower {self.section}.lr")
        state = self.state()
        if self.stage.main:
            save_checkpoint(self.ckpt_dir, self.stage.run, state, self.model, self.family)
        distributed.barrier()
