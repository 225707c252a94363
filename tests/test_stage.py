"""A stage's outputs and their record (`prefect_wandb/stage.py`): artifact names and recorded paths cannot
leave the artifact root, a crash between writing and recording leaves no record of a missing or partial file, two
stages storing the same content at once overwrite nothing, and a disk turned read-only mid-stage is named in one
line with no staging folder left behind. Real stages on real SQLite stores, wandb offline, a real (tmpfs) disk
remounted read-only under a stage in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.config import PipelineConfig
from prefect_wandb.refs import DigestMismatch, verify_files
from prefect_wandb.stage import open_stage
from prefect_wandb.store import FileRecord, LineageStore
from tests.helpers import REPO, assert_store_is_sound, last_line, tmpfs

# ---------------------------------------------------------------------------------------------------- names and paths


@pytest.mark.slow
def test_artifact_names_and_recorded_file_paths_cannot_leave_the_artifact_root(wandb_offline, tmp_path):
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    for bad in ("../evil", "a/b", "..", ""):
        with pytest.raises(ValueError, match="not a plain name"), open_stage(cfg.lineage(), "export-onnx", config=cfg) as stage:
            stage.staging(bad)
    with pytest.raises(ValueError, match="not a plain name"), open_stage(cfg.lineage(), "export-onnx", config=cfg) as stage:
        d = stage.staging("ok")
        (d / "f.txt").write_text("x")
        stage.produce("ok", "../../etc", d)
    # only a staged folder is ever moved into the store
    with pytest.raises(ValueError, match="outside"), open_stage(cfg.lineage(), "export-onnx", config=cfg) as stage:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "f.txt").write_text("x")
        stage.produce("ok", "onnx", tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "f.txt").exists()
    # a store row whose relpath climbs out is refused, not followed
    (tmp_path / "secret.txt").write_text("s")
    with pytest.raises(DigestMismatch, match="escapes its artifact folder"):
        verify_files(tmp_path / "art", (FileRecord("../secret.txt", "0" * 64, 1),))
    store = LineageStore(cfg.lineage_db)
    assert store.artifacts() == [] and {r.status for r in store.runs()} == {"failed"}
    assert not [p for p in (tmp_path / "art").rglob("*") if p.is_file()]


# -------------------------------------------------------------------------------- crash between writing and recording


class _StoreDown(RuntimeError):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("where", ["finish_run", "fsync_tree"])
def test_a_crash_between_writing_and_recording_leaves_no_record_of_a_missing_or_partial_file(
        wandb_offline, tmp_path, monkeypatch, where):
    from prefect_wandb import stage as stage_module

    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    store = LineageStore(cfg.lineage_db)
    calls = []

    def fails_once(real):
        def wrapper(*a, **kw):
            calls.append(where)
            if len(calls) == 1:
                raise _StoreDown(f"{where}: disk gone")
            return real(*a, **kw)
        return wrapper

    if where == "finish_run":
        monkeypatch.setattr(LineageStore, "finish_run", fails_once(LineageStore.finish_run))
    else:
        monkeypatch.setattr(stage_module, "fsync_tree", fails_once(stage_module.fsync_tree))

    def step():
        with open_stage(cfg.lineage(), "export-onnx", config=cfg) as stage:
            out = stage.staging("convnet-onnx")
            (out / "model.onnx").write_bytes(b"onnx bytes" * 1000)
            (out / "export.json").write_text("{}")
            stage.produce("convnet-onnx", "onnx", out, {"opset": 18})
        return stage

    with pytest.raises(_StoreDown):
        step()
    [failed] = store.runs()
    assert failed.status == "failed" and f"{where}: disk gone" in failed.error
    assert store.artifacts() == []  # no record, so nothing recorded can be missing or partial
    assert not (cfg.artifacts_dir / ".staging").exists() or not any((cfg.artifacts_dir / ".staging").iterdir())
    if where == "fsync_tree":  # crashed before the rename: nothing reached its final place
        assert not (cfg.artifacts_dir / "onnx").exists()

    # the same step again succeeds, and what it records is whole (an orphan of the crash is verified, not trusted)
    stage = step()
    [art] = store.artifacts()
    assert art.producer_run_id == stage.run_id and art.version == 0
    verify_files(Path(art.path), art.files)
    assert [p.name for p in Path(art.path).parent.iterdir()] == [Path(art.path).name]
    assert [r.status for r in store.runs()] == ["failed", "finished"]
    assert_store_is_sound(store)


def test_two_stages_storing_the_same_content_at_the_same_moment_overwrite_nothing(wandb_offline, tmp_path,
                                                                                   monkeypatch):
    """Both stages reach the rename having found the folder absent (a barrier holds them there): one rename
    wins, the other finds the folder whole and records the same version; neither fails, nothing is replaced."""
    import threading

    from prefect_wandb import stage as stage_module

    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    barrier = threading.Barrier(2, timeout=60)

    class _OsWithSlowRename:  # the stage module's `os`, whose rename of a staged folder waits for the other stage
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            if ".staging" in str(src):
                barrier.wait()
            return os.replace(src, dst)

    monkeypatch.setattr(stage_module, "os", _OsWithSlowRename())
    errors, stages = [], []

    def step():
        try:
            with open_stage(cfg.lineage(), "prepare-data", config=cfg) as stage:
                out = stage.staging("mnist")
                (out / "train.pt").write_bytes(b"the same bytes" * 4096)
                stage.produce("mnist", "dataset", out, {})
            stages.append(stage)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=step) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = LineageStore(cfg.lineage_db)
    [art] = store.artifacts()
    assert sorted(store.producers(art.artifact_id)) == sorted(s.run_id for s in stages)
    assert [p.name for p in Path(art.path).parent.iterdir()] == [Path(art.path).name]
    assert_store_is_sound(store)


# -------------------------------------------------------------------------------------------- a disk turned read-only


@pytest.mark.slow
def test_an_artifacts_folder_turned_read_only_mid_stage_names_the_file_and_leaves_no_staging_behind(
        wandb_offline, tmp_path):
    """The disk under the artifacts folder is remounted read-only while a stage (in a process of its own) writes its
    outputs: the error names the file meant (not its temporary name), the run is failed, and the staging folder the
    failed process could not delete is removed by a later process's stage once the disk is writable again."""
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"),
                                         "lineage_db": str(tmp_path / "lineage.db"),
                                         "wandb": {"mode": "offline"}}).resolved()
    stage_code = """import subprocess, sys
from mnist_pipeline.config import PipelineConfig
from prefect_wandb.stage import open_stage
from prefect_wandb.storage import StorageError, write_json
cfg = PipelineConfig.model_validate_json(sys.argv[1])
try:
    with open_stage(cfg.lineage(), sys.argv[2], config=cfg) as stage:
        if sys.argv[2] == "train":
            out = stage.staging("convnet")
            subprocess.run(["mount", "-o", "remount,ro", str(cfg.artifacts_dir)], check=True)
            write_json(out / "model_config.json", {"kernels": [4, 8]})
except StorageError as e:
    sys.exit(f"StorageError: {e}")
"""

    def stage(job_type: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", stage_code, cfg.model_dump_json(), job_type], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    staging = tmp_path / "art" / ".staging"
    with tmpfs(tmp_path / "art", size="1m"):
        proc = stage("train")
        [failed] = LineageStore(cfg.lineage_db).runs()
        out = staging / failed.run_id / "convnet"
        assert proc.returncode == 1 and last_line(proc.stderr) == (
            f"StorageError: Read-only file system while writing {out / 'model_config.json'}"), proc.stderr[-2000:]
        assert failed.status == "failed" and "Read-only file system" in failed.error
        assert [p.name for p in staging.iterdir()] == [failed.run_id]  # the failed process could not delete it
        subprocess.run(["mount", "-o", "remount,rw", str(tmp_path / "art")], check=True)
        proc = stage("evaluate")  # a later run's stage removes what the ended process left
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert list(staging.iterdir()) == []
        assert [p for p in (tmp_path / "art").rglob("*") if p.is_file()] == []



def test_a_stage_with_wandb_disabled_records_its_output_in_the_store_only(tmp_path, monkeypatch):
    """`--wandb-mode disabled`: wandb's no-op run has no files folder; the stage still commits, W&B hears nothing."""
    from prefect_wandb import LineageSettings, WandbSettings

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    settings = LineageSettings(store=tmp_path / "lineage.db", artifacts=tmp_path / "art",
                               wandb=WandbSettings(project="p", mode="disabled"))
    with open_stage(settings, "fit") as stage:
        out = stage.staging("model")
        (out / "w.txt").write_text("1")
        stage.produce("model", "model", out)
    [run] = LineageStore(tmp_path / "lineage.db").runs()
    assert run.status == "finished" and run.wandb_mode == "disabled" and stage.outputs["model"].version == 0
    assert not list((tmp_path / "wandb").rglob("requirements.txt"))
