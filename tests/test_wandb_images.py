"""Misclassified digits reach an offline W&B run as real images (PNG files `wandb sync` uploads), read back from
the offline run's own files: its `files/media/images/` folder and the records of its `.wandb` transaction log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_pipeline.config import PipelineConfig
from prefect_wandb.stage import open_stage
from prefect_wandb.wandb.run_file import offline_records, offline_run_file
from tests.browser import png_pixels
from tests.helpers import tiny_digits


def _records(run_dir):
    history, files = {}, []
    for rec in offline_records(offline_run_file(run_dir)):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            for item in rec.history.item:
                history[tuple(item.nested_key) or (item.key,)] = json.loads(item.value_json)
        elif kind == "files":
            files += [f.path for f in rec.files.files]
    return history, files


def _finished(run_dir) -> bool:
    path = offline_run_file(run_dir)
    try:
        return path is not None and any(r.WhichOneof("record_type") == "exit" for r in offline_records(path))
    except Exception:  # a record still being written: not finished yet
        return False


@pytest.mark.slow  # a wandb run
def test_misclassified_images_are_kept_by_an_offline_run(wandb_offline, tmp_path):
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    images, _ = tiny_digits(3, seed=4)
    captions = [f"pred {p} / label {y} (test image {i})" for i, (p, y) in enumerate([(1, 7), (3, 8), (0, 6)])]
    with open_stage(cfg.lineage(), "evaluate", config=cfg) as stage:
        stage.log_images("misclassified", list(images), captions)
        run_dir = Path(stage.wandb.run_dir)
    assert run_dir.name.startswith("offline-run-")

    # wandb's service process may still be writing the run's log when finish() returns: wait for its exit record
    deadline = time.monotonic() + 60
    while not _finished(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    history, uploaded = _records(run_dir)
    assert history[("misclassified", "_type")] == "images/separated"
    assert history[("misclassified", "captions")] == captions
    names = history[("misclassified", "filenames")]
    assert len(names) == 3 and set(names) <= set(uploaded)  # each PNG is a file record: `wandb sync` sends it
    for name, img in zip(names, images, strict=True):
        png = run_dir / "files" / name
        assert png.parent.name == "images" and png.suffix == ".png"
        px = png_pixels(png.read_bytes())  # the digit itself, pixel for pixel (PNG of a uint8 image: /255)
        assert np.array_equal(np.rint(px[..., 0] * 255 if px.ndim == 3 else px * 255).astype(np.uint8), img)


def test_images_and_captions_must_pair_up(wandb_offline, tmp_path):
    cfg = PipelineConfig.model_validate({"artifacts_dir": str(tmp_path / "art"), "wandb": {"mode": "offline"},
                                         "lineage_db": str(tmp_path / "lineage.db")}).resolved()
    with pytest.raises(ValueError, match="2 images but 1 captions"), open_stage(cfg.lineage(), "evaluate", config=cfg) as stage:
        stage.log_images("misclassified", list(tiny_digits(2, 0)[0]), ["only one"])
