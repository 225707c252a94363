"""The training loop: in-memory tensors, seeded shuffling, periodic checkpoints that a rerun resumes from.

The dataset is turned into one float tensor once; each batch is an index_select, so there is no per-item
PIL transform and no DataLoader worker start-up in the hot loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mnist_pipeline.checkpoint_files import discard_checkpoint, sidecar
from mnist_pipeline.config import TrainConfig
from mnist_pipeline.data import Split, to_float
from mnist_pipeline.model import ConvNet
from prefect_wandb import storage

log = logging.getLogger(__name__)

LogFn = Callable[[int, int, float], None]  # (examples seen, epoch, loss)
LossPoint = tuple[int, int, float]  # (examples seen, epoch, loss): one logged point


_TRAIN = TrainConfig.model_fields


@dataclass(frozen=True)
class LoopSettings:
    """The loop's part of `TrainConfig` (its defaults are TrainConfig's: one source), plus the progress bar."""

    epochs: int = _TRAIN["epochs"].default
    batch_size: int = _TRAIN["batch_size"].default
    learning_rate: float = _TRAIN["learning_rate"].default
    seed: int = _TRAIN["seed"].default
    log_every: int = _TRAIN["log_every"].default
    checkpoint_every: int = _TRAIN["checkpoint_every"].default  # batches; and at the end of every epoch
    progress: bool = True
    channels_last: bool = _TRAIN["channels_last"].default  # NHWC: oneDNN's faster conv layout on CPU

    @classmethod
    def from_config(cls, t: TrainConfig, *, progress: bool = True) -> LoopSettings:
        return cls(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, seed=t.seed,
                   log_every=t.log_every, checkpoint_every=t.checkpoint_every, progress=progress,
                   channels_last=t.channels_last)


@dataclass
class TrainResult:
    examples_seen: int
    batches: int
    seconds: float
    final_loss: float
    resumed_from: dict | None  # {"epoch", "batch", "examples_seen"} when a checkpoint was picked up
    checkpoint_written_by: str | None = None  # the run that wrote that checkpoint
    # Every point logged over the whole training, those before a resume included (a checkpoint carries them)
    loss_points: list[LossPoint] = field(default_factory=list)


class TrainingDiverged(ArithmeticError):
    """The training loss ended as NaN or infinity: the weights are not a model."""


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


def _snapshot(obj):
    """A CPU copy of every tensor in a (nested) state dict: what the next optimizer step cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return obj


@dataclass(frozen=True)
class CheckpointLineage:
    """What a checkpoint was written for, kept beside it (`<name>.json`, with its sha256) and checked before a
    resume: a checkpoint of other data or settings, or one changed since it was written, is never resumed."""
    dataset_digest: str
    fingerprint: dict
    run_id: str | None = None  # the run that wrote it (informative: any run of the same inputs may resume it)

    def matches(self, other: dict) -> str | None:
        """None when `other` (a sidecar's lineage) is for the same data and settings, else why not."""
        if other.get("dataset_digest") != self.dataset_digest:
            return f"written for dataset {str(other.get('dataset_digest'))[:16]}, not {self.dataset_digest[:16]}"
        if other.get("fingerprint") != self.fingerprint:
            return f"written for training settings {other.get('fingerprint')}, not {self.fingerprint}"
        return None


def _write_checkpoint(path: Path, state: dict, lineage: CheckpointLineage | None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getbuffer()
    record = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob),
              "lineage": asdict(lineage) if lineage else None,
              "position": {"epoch": state["epoch"], "batch": state["batch"], "examples_seen": state["examples_seen"]}}
    # The sidecar first: a kill between the two writes leaves a sidecar that does not match the checkpoint,
    # which is then discarded (never resumed unchecked). Both are atomic (temporary name, fsync, rename).
    storage.write_bytes_atomic(sidecar(path), json.dumps(record, sort_keys=True, allow_nan=False).encode(), fsync=True)
    storage.write_bytes_atomic(path, blob, fsync=True)


def _checkpoint_problem(path: Path, lineage: CheckpointLineage | None) -> str | None:
    """Why the checkpoint at `path` must not be resumed (None: it may)."""
    try:
        record = json.loads(sidecar(path).read_text())
    except FileNotFoundError:
        return f"no record of its digest and lineage ({sidecar(path).name})"
    except (OSError, ValueError) as e:
        return f"its record {sidecar(path).name} is unreadable ({e})"
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record.get("sha256"):
        return f"sha256 {digest[:16]} does not match the recorded {str(record.get('sha256'))[:16]}: changed since " \
               "it was written"
    if lineage is not None:
        if not isinstance(record.get("lineage"), dict):
            return "its record names no lineage"
        return lineage.matches(record["lineage"])
    return None


def resume_point(path: Path, lineage: CheckpointLineage | None) -> dict | None:
    """What a training with this checkpoint would resume from, as its record says (None: nothing to resume: no
    checkpoint, or one `train` would discard): {run_id, epoch, batch, examples_seen}, `run_id` the run that wrote
    it. For the line a stage logs before it trains ("resuming from checkpoint written by run X at epoch N")."""
    if not path.exists() or _checkpoint_problem(path, lineage):
        return None
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return {"run_id": (record.get("lineage") or {}).get("run_id"), **(record.get("position") or {})}


class _CheckpointWriter:
    """Checkpoints written off the training loop's path: the loop hands over a snapshot (a copy, so training goes
    on) and one background thread saves, fsyncs and renames it. At most one write is in flight (the next hand-over
    waits for it), and `flush()` (at the end of training, on any exit from it) waits for the last one and raises
    its error, so a checkpoint the loop passed is on disk before `train` returns or raises."""

    def __init__(self, path: Path, lineage: CheckpointLineage | None):
        self.path, self.lineage = path, lineage
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, state: dict) -> None:
        try:
            _write_checkpoint(self.path, state, self.lineage)
        except BaseException as e:  # handed to the training thread by flush()
            self._error = e

    def save(self, model: nn.Module, optimizer, epoch: int, batch: int, examples: int, batches: int,
             last_loss: float, points: list[LossPoint]) -> None:
        # Everything the model's files and the run's record take from the loop, not only the weights: a run
        # resumed from the very last checkpoint trains no batch, and must still end as an uninterrupted one.
        state = {"model": _snapshot(model.state_dict()), "optimizer": _snapshot(optimizer.state_dict()),
                 "epoch": epoch, "batch": batch, "examples_seen": examples, "batches": batches,
                 "last_loss": last_loss, "loss_points": [list(p) for p in points]}
        self.flush()
        self._thread = threading.Thread(target=self._run, args=(state,), name="checkpoint-writer", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def train(model: ConvNet, data: Split, settings: LoopSettings, device: torch.device, *,
          on_log: LogFn | None = None, checkpoint: Path | None = None,
          checkpoint_lineage: CheckpointLineage | None = None) -> TrainResult:
    """Adam + cross-entropy over `data`, logging every `log_every` batches with step = examples seen.

    With `checkpoint`, progress is saved there every `checkpoint_every` batches and at each epoch's end,
    and an existing checkpoint is resumed from if its sha256 and `checkpoint_lineage` (dataset digest and
    training fingerprint) match its record; otherwise it is discarded with a warning and training starts over.
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

    start_epoch, start_batch, examples, batches, resumed, written_by = 0, 0, 0, 0, None, None
    points: list[LossPoint] = []
    last_loss: float | None = None  # of the last batch trained, by this run or before the resume
    state = None
    if checkpoint is not None and checkpoint.exists():
        problem = _checkpoint_problem(checkpoint, checkpoint_lineage)
        if problem:
            log.warning("discarding checkpoint %s: %s; training from the start", checkpoint, problem)
            discard_checkpoint(checkpoint)
        else:
            try:
                state = torch.load(checkpoint, map_location=device, weights_only=True)
            except Exception as e:  # unreadable (e.g. from another code version): start over rather than fail
                log.warning("ignoring unreadable checkpoint %s (%s: %s); training from the start", checkpoint,
                            type(e).__name__, e)
            if state is not None and not {"last_loss", "loss_points"} <= set(state):
                log.warning("ignoring checkpoint %s: written by an older version, without its loss record; "
                            "training from the start", checkpoint)
                state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, start_batch = state["epoch"], state["batch"]
        examples, batches = state["examples_seen"], state["batches"]
        last_loss = float(state["last_loss"])
        points = [(int(e), int(ep), float(v)) for e, ep, v in state["loss_points"]]
        resumed = {"epoch": start_epoch, "batch": start_batch, "examples_seen": examples}
        if checkpoint_lineage is not None and checkpoint is not None:
            written_by = json.loads(sidecar(checkpoint).read_text())["lineage"].get("run_id")
        if start_epoch >= settings.epochs:
            log.info("resuming from checkpoint %s written after the last batch (%d epoch(s), %d examples): nothing "
                     "left to train", checkpoint, settings.epochs, examples)
        else:
            log.info("resuming from checkpoint %s at epoch %d, batch %d (%d examples seen)", checkpoint,
                     start_epoch, start_batch, examples)

    writer = _CheckpointWriter(checkpoint, checkpoint_lineage) if checkpoint is not None else None
    t0 = time.perf_counter()
    loss = None
    bar = tqdm(total=settings.epochs * per_epoch, initial=start_epoch * per_epoch + start_batch,
               desc="train", unit="batch", leave=False,
               disable=None if settings.progress else True)  # None: no bar (no carriage returns) off a terminal
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
                    points.append((examples, epoch, loss_value))
                    bar.set_postfix(loss=f"{loss_value:.3f}", epoch=epoch)
                    if on_log:
                        on_log(examples, epoch, loss_value)
                done_epoch = b + 1 == per_epoch
                if writer is not None and (done_epoch or batches % settings.checkpoint_every == 0):
                    nxt = (epoch + 1, 0) if done_epoch else (epoch, b + 1)
                    writer.save(model, optimizer, *nxt, examples, batches, loss.item(), points)
        if loss is not None:
            last_loss = loss.item()
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
    model.eval()
    if last_loss is None or not math.isfinite(last_loss):
        # a model whose loss is not a number has diverged: not worth recording (and NaN is not JSON)
        raise TrainingDiverged(f"training diverged: the loss after {batches} batches is {last_loss} "
                               f"(train.learning_rate {settings.learning_rate:g} may be too large)")
    return TrainResult(examples_seen=examples, batches=batches, seconds=time.perf_counter() - t0,
                       final_loss=last_loss, resumed_from=resumed, checkpoint_written_by=written_by,
                       loss_points=points)
