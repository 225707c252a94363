"""The training loop: in-memory tensors, seeded shuffling, periodic checkpoints that a rerun resumes from.

The dataset is turned into one float tensor once; each batch is an index_select, so there is no per-item
PIL transform and no DataLoader worker start-up in the hot loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mnist_pipeline.data import Split, to_float
from mnist_pipeline.model import ConvNet

log = logging.getLogger(__name__)

LogFn = Callable[[int, int, float], None]  # (examples seen, epoch, loss)


@dataclass(frozen=True)
class LoopSettings:
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 0.005
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 100  # batches; a checkpoint is also written at the end of every epoch
    progress: bool = True
    channels_last: bool = True  # NHWC: oneDNN's faster conv layout on CPU (about 1.25x per core here)


@dataclass
class TrainResult:
    examples_seen: int
    batches: int
    seconds: float
    final_loss: float
    resumed_from: dict | None  # {"epoch", "batch", "examples_seen"} when a checkpoint was picked up


def seed_everything(seed: int) -> None:
    """Seed torch and ask for deterministic kernels.

    On CPU every op of this loop is deterministic for a given intra-op thread count (the count is what changes
    the weights: oneDNN splits its reductions by thread), so `set_threads` and the recorded count are what a
    reproduction needs. On CUDA, cuDNN autotuning is off and PyTorch's deterministic algorithms are on (warning
    where an op has none; cuBLAS needs CUBLAS_WORKSPACE_CONFIG, set here if absent)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0: one per core) and return it: on CPU the trained weights depend on it,
    so it is recorded with the training run and a reproduction uses the same count."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    # One generator per epoch: the order of epoch e does not depend on how the run got there, so a
    # resumed run sees exactly the batches an uninterrupted one would have.
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def _save_checkpoint(path: Path, model: nn.Module, optimizer, epoch: int, batch: int, examples: int,
                     batches: int) -> None:
    # A temporary name of its own: two runs of the same config may share the checkpoint path.
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                "batch": batch, "examples_seen": examples, "batches": batches}, tmp)
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


def train(model: ConvNet, data: Split, settings: LoopSettings, device: torch.device, *,
          on_log: LogFn | None = None, checkpoint: Path | None = None,
          stop_after_batches: int | None = None) -> TrainResult:
    """Adam + cross-entropy over `data`, logging every `log_every` batches with step = examples seen.

    With `checkpoint`, progress is saved there every `checkpoint_every` batches and at each epoch's end,
    and an existing checkpoint is resumed from. `stop_after_batches` ends early (for fault-injection tests).
    """
    x_all = to_float(data.images).to(device)
    y_all = data.labels.to(device)
    n = len(data)
    model.to(device).train()
    if settings.channels_last:
        x_all = x_all.contiguous(memory_format=torch.channels_last)  # index_select keeps the layout
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    criterion = nn.CrossEntropyLoss()
    per_epoch = (n + settings.batch_size - 1) // settings.batch_size

    start_epoch, start_batch, examples, batches, resumed = 0, 0, 0, 0, None
    state = None
    if checkpoint is not None and checkpoint.exists():
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        except Exception as e:  # unreadable (e.g. from another code version): start over rather than fail
            log.warning("ignoring unreadable checkpoint %s (%s: %s); training from the start", checkpoint,
                        type(e).__name__, e)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_batch = state["epoch"], state["batch"]
        examples, batches = state["examples_seen"], state["batches"]
        resumed = {"epoch": start_epoch, "batch": start_batch, "examples_seen": examples}
        log.info("resuming from checkpoint %s at epoch %d, batch %d", checkpoint, start_epoch, start_batch)

    t0 = time.perf_counter()
    loss_value, loss = float("nan"), None
    bar = tqdm(total=settings.epochs * per_epoch, initial=start_epoch * per_epoch + start_batch,
               desc="train", unit="batch", disable=not settings.progress, leave=False)
    try:
        for epoch in range(start_epoch, settings.epochs):
            order = _epoch_order(n, settings.seed, epoch).to(device)
            first = start_batch if epoch == start_epoch else 0
            for b in range(first, per_epoch):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                images, labels = x_all.index_select(0, idx), y_all.index_select(0, idx)
                loss = criterion(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                examples += len(idx)
                batches += 1
                bar.update(1)
                # The tutorial reports when (batch_ct + 1) % 25 == 0; kept as is so curves line up.
                if (batches + 1) % settings.log_every == 0:
                    loss_value = loss.item()
                    bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch)
                    if on_log:
                        on_log(examples, epoch, loss_value)
                done_epoch = b + 1 == per_epoch
                if checkpoint is not None and (done_epoch or batches % settings.checkpoint_every == 0):
                    nxt = (epoch + 1, 0) if done_epoch else (epoch, b + 1)
                    _save_checkpoint(checkpoint, model, optimizer, *nxt, examples, batches)
                if stop_after_batches is not None and batches >= stop_after_batches:
                    raise InterruptedError(f"stopped after {batches} batches (stop_after_batches)")
        if loss is not None:
            loss_value = loss.item()
    finally:
        bar.close()
    model.eval()
    return TrainResult(examples_seen=examples, batches=batches, seconds=time.perf_counter() - t0,
                       final_loss=loss_value, resumed_from=resumed)
