"""Re-run the recorded stages that made an artifact, in a scratch folder, and compare the files bit for bit.

The stages run the same functions as the pipeline's tasks (`mnist_pipeline.stage_files`), with the recorded config,
seed and intra-op thread count, on the recorded dataset artifact (its files re-checked first). No Prefect, no
W&B and no write to the lineage store: a reproduction is a check, not a new version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mnist_pipeline import stage_files, training
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.data import load_split
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.reproduction_plan import (
    CannotReproduce,
    Comparison,
    ReproductionPlan,
    compare,
)


@dataclass
class Reproduction:
    comparisons: list[Comparison] = field(default_factory=list)
    threads: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> Comparison:
        return self.comparisons[-1]


def _config(step) -> PipelineConfig:
    """The recorded run's config. Its data paths may be gone (a reproduction reads the dataset artifact, never the
    raw files), so only `slice` of the data section is kept: it is part of the training fingerprint."""
    cfg = dict(step.config)
    cfg["data"] = {"slice": (cfg.get("data") or {}).get("slice", 5), "source": "synthetic"}
    try:
        return PipelineConfig.model_validate(cfg)
    except ValueError as e:
        raise CannotReproduce(f"the recorded config of run {step.run_id} is not valid for this code version: "
                              f"{' '.join(str(e).split())[:300]}") from None


def recorded_threads(step) -> int:
    """The intra-op thread count the training ran with (older records kept it in the model's metadata)."""
    n = step.summary.get("threads") or step.output.metadata.get("threads")
    if not n:
        t = (step.config.get("train") or {}).get("threads") or 0
        n = t or os.cpu_count() or 1
    return int(n)


def run(plan: ReproductionPlan, scratch: Path, *, threads: int | None = None) -> Reproduction:
    scratch = Path(scratch)
    out = Reproduction()
    train = plan.train
    cfg = _config(train)
    if str(train.summary.get("device", "cpu")).startswith("cuda"):
        out.notes.append("the model was trained on CUDA; this reproduction runs on CPU: expect other bits")
    out.threads = threads or recorded_threads(train)
    training.seed_everything(cfg.train.seed)
    training.set_threads(out.threads)
    split = load_split(Path(plan.dataset.path) / "train.pt")
    t = cfg.train
    settings = training.LoopSettings.from_config(t, progress=False)
    model_dir = scratch / "model"
    model_dir.mkdir(parents=True)
    stage_files.train_model_files(model_dir, split, kernels=t.kernels, classes=t.classes, settings=settings,
                              fingerprint=cfg.training_fingerprint(), device=torch.device("cpu"))
    out.comparisons.append(_compare(train.output, model_dir))
    for step in plan.steps[1:]:
        scfg = _config(step)
        d = scratch / step.output.type
        d.mkdir(parents=True)
        if step.job_type == "export-onnx":
            # the provenance pointers in the file are the recorded export's (its run, not this reproduction)
            stage_files.export_onnx_files(model_dir / "model.pt", d, opset=scfg.onnx.opset, exporter=scfg.onnx.exporter,
                                          provenance=step.output.metadata.get("provenance"))
        elif step.job_type == "evaluate":
            test = load_split(Path(step.inputs["dataset"].path) / "test.pt")
            stage_files.evaluate_files(model_dir / "model.pt", test, d, batch_size=scfg.evaluate.batch_size,
                                   misclassified_rows=scfg.evaluate.misclassified_table_rows)
        else:
            raise CannotReproduce(f"{step.output.label}: cannot re-run a {step.job_type} stage")
        out.comparisons.append(_compare(step.output, d))
    return out


def _compare(recorded, directory: Path) -> Comparison:
    files = manifest(directory)
    return compare(recorded, directory, manifest_digest(files) if files else None)
