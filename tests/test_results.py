"""The typed stage results: each record round-trips through its metadata, reads what an older version wrote, has the
keys the stages have always written, and every consumer reads another stage's metadata through them."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import typing
from pathlib import Path

import pytest
import torch

from mnist_pipeline import lookups, onnx_io
from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.results import (
    ArtifactLocation,
    AttestationInfo,
    DatasetInfo,
    MetricsResult,
    ModelInfo,
    PromotionOutcome,
    RunSummary,
    SweepResult,
    SweepSummary,
    TrainingResult,
    ValidationResult,
)
from mnist_pipeline.sweep import Sweep, parse_sweep
from mnist_pipeline.tasks.validate_onnx import parity_failure
from prefect_wandb import WandbWhereabouts
from prefect_wandb.queries import StageWandb
from prefect_wandb.records import NewArtifact
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import LineageStore

REPO = Path(__file__).resolve().parents[1]

TRAINING = TrainingResult(train_seconds=1.25, final_loss=0.5, examples_seen=120, resumed=True,
                          resumed_from_checkpoint={"epoch": 0, "batch": 3, "examples_seen": 48},
                          checkpoint_written_by="abc123", threads=2, device="cpu", torch_deterministic=True,
                          loss_points=[[16, 0, 2.3], [120, 0, 0.5]])
MODEL = ModelInfo(model_config={"kernels": [16, 32], "classes": 10}, fingerprint={"epochs": 1, "seed": 0},
                  channels_last=True, examples_seen=120, batches=8, final_loss=0.5)
DATASET = DatasetInfo(source="local", source_location="/src", mirrors=[], raw_store="/raw", slice=5,
                      raw_files=[{"name": "t10k-images-idx3-ubyte", "sha256": "ab", "size": 10, "md5": "cd"}],
                      notes=["n"], sizes={"train": 120, "test": 40},
                      class_counts={"train": [12] * 10, "test": [4] * 10})
METRICS = MetricsResult(test_accuracy=0.9, test_loss=0.3, test_count=40, per_class_accuracy=[0.9] * 10,
                        confusion_matrix=[[4] * 10] * 10, misclassified_count=4)
VALIDATION = ValidationResult(max_abs_diff=1e-6, argmax_agreement=1.0, ort_accuracy=0.9, torch_accuracy=0.9, count=40,
                              latency_ms_p50=0.1, latency_ms_p99=0.2, throughput_batch=32, ort_throughput_per_s=9e3,
                              torch_throughput_per_s=8e3, passed=True, tolerance=1e-4, min_agreement=0.999)
ATTESTATION = AttestationInfo(subject={"name": "model.onnx", "sha256": "ef"}, public_key_fingerprint="f" * 64,
                              bundle="model.onnx.sig", envelope="model.onnx.intoto.jsonl",
                              signer_public_key="signer.pub", onnx_artifact={"name": "convnet-onnx", "digest": "12"},
                              payload_type="application/vnd.in-toto+json",
                              predicate_type="https://slsa.dev/provenance/v1", verify="v", verify_bundle="vb")
PROMOTION = PromotionOutcome("promoted", "first validated model", 0.9, None)
SWEEP_RESULT = SweepResult(sweep={"method": "grid"}, metric={"name": "test_accuracy", "goal": "maximize"},
                           trials=[{"trial": 0, "rank": 1}], winner={"trial": 0, "test_accuracy": 0.9}, failed=[])
LOC = ArtifactLocation("mnist:v0", "d" * 64, "/art/dataset/mnist/dd")
WANDB = WandbWhereabouts(mode="offline", line="W&B: offline in /w", group_urls=[], offline_dirs=["/w"], needs_sync=True,
                         sync_command="mnist-pipeline sync --lineage-db /l.db",
                         runs=[StageWandb("train", "r1", "offline", None, "/w/offline-run-r1", [])])
SKIPPED = RunSummary(status="skipped", reason="training skipped: unchanged", production="convnet:v0",
                     artifacts={"dataset": LOC}, lineage_db="/l.db", config_sources={}, wandb=WANDB)
COMPLETED = RunSummary(
    status="completed", reason="retrained: first", artifacts={"dataset": LOC, "model": LOC}, test_accuracy=0.9,
    test_loss=0.3, onnx_accuracy=0.9, onnx_max_abs_diff=1e-6, onnx_argmax_agreement=1.0, onnx_latency_ms_p50=0.1,
    onnx_throughput_per_s=9e3, promotion=PROMOTION, lineage_db="/l.db", config_sources={"train.seed": "x"},
    report="/r/report.html", onnx_file="/o/model.onnx", wandb=WANDB)
SWEEP_SUMMARY = SweepSummary(status="completed", sweep={"method": "grid"}, flow_run_id="fr", workers=2,
                             sweep_result=LOC, trials=[{"trial": 0}], failed=[], lineage_db="/l.db",
                             winner={"trial": 0}, promotion=PROMOTION)
RECORDS = [TRAINING, MODEL, DATASET, METRICS, VALIDATION, ATTESTATION, PROMOTION, SWEEP_RESULT, LOC, SKIPPED,
           COMPLETED, SWEEP_SUMMARY]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_its_metadata_and_json(record):
    meta = record.to_metadata()
    assert type(record).from_metadata(meta) == record
    # as a store or W&B keeps it: through JSON
    assert type(record).from_metadata(json.loads(json.dumps(meta))).to_metadata() == json.loads(json.dumps(meta))
    assert pickle.loads(pickle.dumps(record)) == record  # a Prefect result (pickled) comes back equal


def test_a_record_reads_metadata_an_older_version_wrote():
    # a validation from before `min_agreement` and the latencies were recorded, with the stage's own keys
    old = {"max_abs_diff": 2e-6, "argmax_agreement": 1.0, "ort_accuracy": 0.8, "torch_accuracy": 0.8, "count": 40,
           "passed": True, "inputs": [{"type": "onnx", "name": "convnet-onnx", "digest": "x"}], "files": {},
           "producer": {"job_type": "validate-onnx"}, "some_future_key": 1}
    v = ValidationResult.from_metadata(old)
    assert (v.passed, v.ort_accuracy, v.min_agreement, v.latency_ms_p50) == (True, 0.8, None, None)
    assert "some_future_key" not in v.to_metadata() and "inputs" not in v.to_metadata()
    # a train run summary without the resume facts or the loss curve
    t = TrainingResult.from_metadata({"train_seconds": 3.5, "final_loss": 0.1, "threads": 2, "repaired": []})
    assert (t.train_seconds, t.threads, t.resumed, t.loss_curve(), t.device) == (3.5, 2, False, [], None)
    assert TrainingResult.from_metadata(None) == TrainingResult()
    # metrics without a per-class breakdown; a sweep result of a sweep where nothing finished
    m = MetricsResult.from_metadata({"test_accuracy": 0.5, "test_loss": 1.0})
    assert m.values() == {"test_accuracy": 0.5, "test_loss": 1.0} and m.per_class_accuracy == []
    assert "misclassified" not in m.to_metadata()  # only metrics.json lists them
    assert SweepResult.from_metadata({"winner": None, "trials": []}).winner_trial is None
    # a summary printed by the previous version (the JSON of `mnist-pipeline run`)
    printed = {"status": "completed", "reason": "r", "artifacts": {"model": {"ref": "convnet:v0", "digest": "d",
               "path": "/p"}}, "test_accuracy": 0.9, "promotion": {"decision": "candidate", "reason": "worse",
               "candidate_accuracy": 0.1, "production_accuracy": 0.9}, "lineage_db": "/l.db", "config_sources": {}}
    s = RunSummary.from_metadata(printed)
    assert s.artifacts["model"].ref == "convnet:v0" and s.promotion == PromotionOutcome("candidate", "worse", 0.1, 0.9)
    assert s.to_dict() == printed


def test_the_records_have_the_keys_the_stages_write():
    from mnist_pipeline import metrics, stage_files

    assert {f.name for f in dataclasses.fields(ValidationResult)} == {f.name for f in dataclasses.fields(
        onnx_io.Validation)}
    ev = metrics.Evaluation(0.3, 0.9, [0.9, 0.8], [[4, 1], [0, 5]], torch.zeros(10), 10, torch.zeros(10, 2))
    written = {**ev.summary(), "misclassified_count": 1}  # what evaluate puts in the metrics' metadata
    assert MetricsResult.from_metadata(written).to_metadata() == written
    assert set(ModelInfo.__dataclass_fields__) == set(re.findall(r'"(\w+)":', _source(stage_files.model_file_metadata)))
    report = onnx_io.Validation(1e-6, 1.0, 0.9, 0.9, 40, 0.1, 0.2, 32, 9e3, 8e3, True, 1e-4, 0.999)
    assert ValidationResult.from_report(report).to_metadata() == report.to_dict()  # the keys validate-onnx wrote
    assert list(ValidationResult.from_report(report).to_metadata()) == list(report.to_dict())


def _source(fn) -> str:
    import inspect

    return inspect.getsource(fn)


def test_the_summary_has_the_keys_and_order_the_cli_has_always_printed():
    assert list(SKIPPED.to_dict()) == ["status", "reason", "production", "artifacts", "lineage_db",
                                       "config_sources", "wandb"]
    assert list(COMPLETED.to_dict()) == ["status", "reason", "artifacts", "test_accuracy", "test_loss",
                                         "onnx_accuracy", "onnx_max_abs_diff", "onnx_argmax_agreement",
                                         "onnx_latency_ms_p50", "onnx_throughput_per_s", "promotion", "lineage_db",
                                         "config_sources", "report", "onnx_file", "wandb"]
    decided = dataclasses.replace(SKIPPED, model="convnet:v3")  # a model of these inputs the gate already decided
    assert list(decided.to_dict())[:5] == ["status", "reason", "production", "model", "artifacts"]
    signed = dataclasses.replace(COMPLETED, signed_onnx_file="/s/model.onnx")
    assert list(signed.to_dict())[-3:] == ["onnx_file", "signed_onnx_file", "wandb"]
    assert COMPLETED.to_dict()["artifacts"]["dataset"] == {"ref": "mnist:v0", "digest": "d" * 64,
                                                           "path": "/art/dataset/mnist/dd"}
    assert list(SWEEP_SUMMARY.to_dict()) == ["status", "sweep", "flow_run_id", "workers", "sweep_result", "trials",
                                             "failed", "lineage_db", "winner", "promotion"]
    json.dumps(COMPLETED.to_dict())  # plain JSON


def test_parity_failure_reads_the_validation_record():
    cfg = PipelineConfig()
    assert parity_failure(cfg, VALIDATION, "convnet-onnx-validation:v0") is None
    failed = ValidationResult.from_metadata({**VALIDATION.to_metadata(), "passed": False, "max_abs_diff": 0.5})
    msg = parity_failure(cfg, failed, "convnet-onnx-validation:v3")
    assert msg is not None and "logit difference 0.5" in msg and msg.endswith("report convnet-onnx-validation:v3")


def _record(store, tmp_path, run_id, job, type_, meta, summary, used=()):
    store.start_run(run_id, job, config={}, env={}, flow_run_id="f", run_group="g", wandb_mode="offline",
                    wandb_dir=None, wandb_project="p", wandb_entity=None)
    folder = tmp_path / "art" / run_id
    folder.mkdir(parents=True)
    (folder / "x.bin").write_text(run_id)
    files = manifest(folder)
    inputs = [{"name": u.name, "type": u.type, "version": u.version, "digest": u.digest} for u in used]
    art = NewArtifact(f"{type_}-{run_id}" if type_ != "model" else "convnet", type_, manifest_digest(files),
                      str(folder), {**meta, "inputs": inputs}, files)
    [rec] = store.finish_run(run_id, used=[u.artifact_id for u in used], produced=[art], summary=summary,
                             wandb_url=None, wandb_mode="offline")
    return rec


def test_the_queries_read_an_old_store_through_the_records(tmp_path):
    """A store written by an older version (a train summary without today's keys, a model without `batches`):
    the sweep's reuse and timing questions still answer."""
    store = LineageStore(tmp_path / "l.db")
    d = _record(store, tmp_path, "prep", "prepare-data", "dataset", {"source": "synthetic", "slice": 1}, {})
    fp = {"epochs": 1, "seed": 0}
    m = _record(store, tmp_path, "train", "train", "model", {"fingerprint": fp, "model_config": {}},
                {"train_seconds": 2.5, "threads": 1}, [d])
    e = _record(store, tmp_path, "eval", "evaluate", "metrics", {"test_accuracy": 0.7, "test_loss": 0.9}, {}, [m, d])
    assert lookups.train_seconds(store, m) == 2.5
    found = lookups.finished_trial(store, "convnet", d.digest, fp)
    assert found is not None and [r.artifact_id for r in found] == [m.artifact_id, e.artifact_id]
    assert lookups.finished_trial(store, "convnet", d.digest, {**fp, "seed": 1}) is None
    assert MetricsResult.from_metadata(found[1].metadata).values() == {"test_accuracy": 0.7, "test_loss": 0.9}


def test_the_sweep_flow_takes_a_typed_sweep_and_returns_a_summary():
    from mnist_pipeline.flows import pipeline, sweep
    from mnist_pipeline.tasks.sweep import select

    hints = typing.get_type_hints(sweep.mnist_sweep.fn)
    assert hints["sweep"] == Sweep | None
    assert SweepSummary in typing.get_args(hints["return"])  # or the Completed state that says the outcome
    assert typing.get_type_hints(select.fn)["sweep"] is Sweep
    assert RunSummary in typing.get_args(typing.get_type_hints(pipeline.mnist_lineage_pipeline.fn)["return"])
    # Prefect validates the parameter: a checked Sweep goes through as it is
    spec = parse_sweep({"method": "grid", "metric": {"name": "test_loss", "goal": "minimize"},
                        "parameters": {"train.kernels": {"values": [[8, 16], [16, 32]]}}})
    validated = sweep.mnist_sweep.validate_parameters({"sweep": spec})
    assert validated["sweep"] == spec and validated["sweep"].metric.name == "test_loss"


# Reading another stage's metadata (an artifact's, a run's summary) by string key, in the modules that consume it.
BY_KEY = re.compile(r"""(\.metadata|\bsummary|\bmeta|\breport|\bv|\bm|\bd)(\[|\.get\()["'](?!inputs\b|files\b)""")
CONSUMERS = ["tasks/*.py", "flows/pipeline.py", "flows/sweep.py",
             "flows/flow_artifact.py", "prefect_wandb/queries.py", "mnist_pipeline/lookups.py",
             "mnist_pipeline/cli/sweep.py", "mnist_pipeline/cli/main.py", "mnist_pipeline/report/closing_lines.py"]


def test_no_consumer_reads_another_stages_metadata_by_string_key():
    found = []
    for pattern in CONSUMERS:
        paths = sorted(REPO.glob(pattern))
        assert paths, pattern
        for path in paths:
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if BY_KEY.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []


def test_the_records_are_pure_code():
    import subprocess
    import sys

    code = ("import sys, mnist_pipeline.results;"
            "print([m for m in ('prefect', 'wandb', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
