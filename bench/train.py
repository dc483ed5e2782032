"""Training one cell (a variant at a seed) under the experiment's equal budget.

Every variant gets the same steps, the same token budget per step and, for a seed, the same
batches (``TrainBatches`` depends only on config, seed and step). Training is resumable bit for
bit: the learning rate is a pure function of the step, and a checkpoint holds the model, the
optimizer and the RNG state. Under ``torchrun`` the cell trains with DistributedDataParallel;
each rank takes a disjoint share of the same global batch and the loss is the global mean over
images, so K processes follow the single-process run up to float rounding.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import ModelConfig, TrainConfig, VariantSpec
from .data import train_loader
from .model import NaViT, build_model
from .runtime import Interrupted, Ranks, autocast, progress

# A trunk donor with no positional parameters: copying its weights gives every variant the same
# initial patch embedding, blocks and head for a seed, whatever its embedding draws from the RNG.
TRUNK_DONOR = "nope"


def build_cell_model(m: ModelConfig, spec: VariantSpec, num_classes: int, channels: int, seed: int) -> NaViT:
    """The model of one cell; ``spec`` as planned, every option spelled out."""
    common = dict(channels=channels, mlp_ratio=m.mlp_ratio, pool=m.pool, attention=m.attention)
    torch.manual_seed(seed)
    model = build_model(spec.name, num_classes, m.patch_size, m.dim, m.depth, m.heads, **common, **spec.options)
    torch.manual_seed(seed)
    donor = build_model(TRUNK_DONOR, num_classes, m.patch_size, m.dim, m.depth, m.heads, **common)
    missing, unexpected = model.load_state_dict(donor.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pos.") for key in missing):
        raise RuntimeError(f"trunk of {spec.name} differs from {TRUNK_DONOR}'s: {missing} {unexpected}")
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(train: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weight matrices only: norms, biases and every positional parameter are
    exempt, so table rows a variant never sees in training stay exactly at their init."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and not name.startswith("pos.") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel over every parameter, not a dozen small ops per tensor: the default model
    # has about 40 tensors, and its step is short enough for that to show.
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=train.beta1, foreach=True)
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=True)


def lr_at(train: TrainConfig, step: int) -> float:
    """Linear warmup to lr, then cosine / linear decay to min_lr (or constant)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return train.lr
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if train.schedule == "cosine" else 1 - progress
    return train.min_lr + (train.lr - train.min_lr) * shape


@dataclass
class TrainState:
    """Everything a resumed cell needs; also what training reports when it ends."""
    step: int = 0
    losses: list[float] = field(default_factory=list)   # global mean loss of every step
    tokens_seen: int = 0
    images_seen: int = 0
    train_time_s: float = 0.0
    failure: str | None = None

    @property
    def final_loss(self) -> float:
        """Mean over the last tenth of training: one step's loss is too noisy to compare."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail)


@dataclass
class CellTrainer:
    """Trains one model; ``save``/``load`` persist checkpoints (None: no checkpointing)."""
    train: TrainConfig
    device: torch.device
    ranks: Ranks
    save: Callable[[dict], None] | None = None
    load: Callable[[], dict | None] | None = None
    should_stop: Callable[[], bool] = lambda: False
    checkpoint_check: dict = field(default_factory=dict)  # must match a checkpoint to resume it
    label: str = ""
    show_progress: bool = True

    def run(self, model: NaViT, batches) -> TrainState:
        optimizer = make_optimizer(self.train, model)
        state = self._resume(model, optimizer)
        wrapped = model
        if self.ranks.distributed:
            on_gpu = self.device.type == "cuda"
            wrapped = DistributedDataParallel(model, device_ids=[self.device.index] if on_gpu else None)
        model.train()
        bar = progress(total=self.train.steps, initial=state.step, desc=self.label, leave=False, position=1,
                       disable=not (self.show_progress and self.ranks.is_main))
        started, session_tokens = time.perf_counter(), 0
        loader = train_loader(batches, state.step, self.train.steps, self.train.num_workers)
        try:
            for step, (batch, labels) in zip(range(state.step, self.train.steps), loader):
                loss, num_images, num_tokens, stop = self._step(wrapped, model, optimizer, step, batch, labels)
                state.step = step + 1
                state.losses.append(loss)
                state.images_seen += num_images
                state.tokens_seen += num_tokens
                session_tokens += num_tokens
                elapsed = time.perf_counter() - started
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{session_tokens / max(elapsed, 1e-9):.0f}", refresh=False)
                if not math.isfinite(loss):
                    state.failure = f"train loss became {loss} at step {step}"
                    break
                if stop:
                    self._checkpoint(model, optimizer, state, started)
                    raise Interrupted(f"stopped at step {state.step} of {self.train.steps}")
                if (self.train.checkpoint_every and state.step % self.train.checkpoint_every == 0
                        and state.step < self.train.steps):
                    self._checkpoint(model, optimizer, state, started)
            if state.failure is None:
                # Evaluation comes next: if it is interrupted, the cell must not train again.
                self._checkpoint(model, optimizer, state, started)
        finally:
            bar.close()
        state.train_time_s += time.perf_counter() - started
        return state

    def _step(self, wrapped, model, optimizer, step, batch, labels):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(self.train, step)
        batch, labels = batch.to(self.device), labels.to(self.device)
        num_images, num_tokens = labels.numel(), batch.num_tokens
        if self.ranks.distributed:
            counts = torch.tensor([num_images, num_tokens], dtype=torch.float64, device=self.device)
            dist.all_reduce(counts)
            num_images, num_tokens = int(counts[0]), int(counts[1])
        with autocast(self.device):
            logits = wrapped(batch)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
        # DDP averages gradients over ranks; scaling by world_size makes that the gradient of
        # the global mean over images, whatever each rank's share of images.
        loss = loss_sum * (self.ranks.world_size / num_images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.train.grad_clip, foreach=True)
        optimizer.step()
        stop = self.should_stop()
        if self.ranks.distributed:
            # Every rank must agree on the loss (to fail together) and on stopping (to save together).
            shared = torch.tensor([loss_sum.item(), float(stop)], dtype=torch.float64, device=self.device)
            dist.all_reduce(shared)
            return shared[0].item() / num_images, num_images, num_tokens, bool(shared[1] > 0)
        return loss_sum.item() / num_images, num_images, num_tokens, stop

    def _resume(self, model: NaViT, optimizer) -> TrainState:
        saved = self.load() if self.load else None
        if saved is None or saved.get("check") != self.checkpoint_check:
            return TrainState()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        return TrainState(**saved["state"])

    def _checkpoint(self, model, optimizer, state: TrainState, started: float) -> None:
        if not (self.save and self.ranks.is_main):
            return
        snapshot = TrainState(**{**state.__dict__, "train_time_s": state.train_time_s + time.perf_counter() - started})
        self.save({"check": self.checkpoint_check, "model": model.state_dict(),
                   "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                   "state": snapshot.__dict__})
