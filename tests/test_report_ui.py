"""The run report as a person sees it: `mnist-pipeline run` against a real `prefect server start` (with its UI) on
loopback, then the Prefect UI's artifact pages, the report file and the manual deployment's Run form in headless
Chromium.

Set MNIST_SCREENSHOTS_DIR to a folder (e.g. docs) to keep the screenshots the README shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_pipeline.cli.local_server import local_prefect_server
from tests.browser import (
    chromium,
    console_errors,
    data_uri_png,
    png_pixels,
    require_chromium,
)
from tests.helpers import free_port, seed_prefect_home, wait_for

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["prepare-data", "train", "evaluate", "export-onnx", "validate-onnx", "promote", "report"]
SHOTS = os.environ.get("MNIST_SCREENSHOTS_DIR")


def _images(driver) -> list:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('main img, img')).map(i => [i.alt, i.complete, i.naturalWidth, i.src])")


def _shot(driver, name: str, height: int | None = None) -> None:
    if SHOTS:
        if height:
            driver.set_window_size(1400, height)
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / name))


@pytest.mark.slow
def test_a_run_shows_its_plots_and_lineage_in_the_prefect_ui_and_the_report(tiny_mnist, wandb_offline, tmp_path,
                                                                           monkeypatch, prefect_db):
    require_chromium()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("PREFECT_UI_API_URL", api)  # the UI's own calls go to this server, on loopback
    with local_prefect_server(home=seed_prefect_home(tmp_path / "prefect-home", prefect_db), port=port, ui=True) as url:
        argv = ["--source", "local", "--local-dir", str(tiny_mnist), "--slice", "1", "--epochs", "2",
                "--batch-size", "16", "--root", str(tmp_path / "data"), "--artifacts-dir", str(tmp_path / "art"),
                "--lineage-db", str(tmp_path / "lineage.db"), "--wandb-mode", "offline",
                "--onnx-latency-samples", "20", "--onnx-throughput-batch", "32", "--log-every", "2"]
        run = subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", "run", *argv], cwd=ROOT, capture_output=True,
                             text=True, timeout=600, env={**os.environ, "PREFECT_API_URL": url}, check=False)
        assert run.returncode == 0, run.stderr[-3000:]
        summary = json.loads(run.stdout)
        report = Path(summary["report"])
        assert report.is_file() and report.name == "report.html"
        # the console says where the report and the ONNX file to audit are
        assert f"report: {report}" in run.stderr and f"ONNX model: {summary['onnx_file']}" in run.stderr

        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            arts = {a.key: a for a in client.read_artifacts() if a.key}
        assert {"mnist-lineage", "mnist-run-report", "mnist-per-class-accuracy"} <= set(arts)
        lineage_md = arts["mnist-lineage"].data
        assert "7.62939453125e-06" not in lineage_md and not re.search(r"\d\.\d{6,}", lineage_md)

        ui = url.removesuffix("/api")
        with chromium(1400, 1000) as driver:
            # the plots: loss curve, confusion matrix, misclassified digits, per-class accuracy, lineage picture
            driver.get(f"{ui}/artifacts/artifact/{arts['mnist-run-report'].id}")
            imgs = wait_for(lambda: [i for i in _images(driver) if i[3].startswith("data:image")] if len(
                [i for i in _images(driver) if i[3].startswith("data:image") and i[1]]) >= 5 else None, 60,
                "the report's images in the Prefect UI")
            alts = {alt for alt, *_ in imgs}
            assert {"loss curve", "confusion matrix", "misclassified digits", "per-class accuracy", "lineage"} <= alts
            for alt, complete, width, src in imgs:
                assert complete and width > 0, alt
                if src.startswith("data:image/png"):
                    assert png_pixels(data_uri_png(src))[..., :3].std() > 0.05, f"{alt} is blank"
            _shot(driver, "prefect-ui-run-report.png", 2600)

            # the per-class table: one row per class, figures rounded
            driver.get(f"{ui}/artifacts/artifact/{arts['mnist-per-class-accuracy'].id}")
            rows = wait_for(lambda: driver.execute_script(
                "return Array.from(document.querySelectorAll('tbody tr')).map(r => r.innerText)"), 60, "table rows")
            assert len(rows) == 10 and not any(re.search(r"\d\.\d{5,}", r) for r in rows)

            # a row per stage (promote and report included); long cells wrap instead of being cut
            driver.set_window_size(1400, 1000)
            driver.get(f"{ui}/artifacts/artifact/{arts['mnist-lineage'].id}")
            cells = wait_for(lambda: driver.execute_script(
                "return Array.from(document.querySelectorAll('td')).map(c => [c.innerText, c.scrollWidth,"
                " c.clientWidth, c.getBoundingClientRect().right,"
                " c.closest('table').parentElement.getBoundingClientRect().right])"), 60, "the lineage table")
            texts = [c[0] for c in cells]
            for stage in STAGES:
                assert stage in texts, stage
            assert any("wandb" in t for t in texts)  # the long W&B run folders are there ...
            cut = [c[0] for c in cells if c[1] > c[2] + 1 or c[3] > c[4] + 1]
            assert cut == [], cut  # ... and no cell is cut: neither inside itself nor by the page's column
            assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
            _shot(driver, "prefect-ui-lineage.png", 1400)
            assert [e for e in console_errors(driver) if "favicon" not in e["message"]] == []

            # the report file itself
            driver.set_window_size(1200, 1000)
            driver.get(report.as_uri())
            imgs = _images(driver)
            assert len(imgs) == 4 and all(c and w > 0 for _, c, w, _ in imgs)
            text = driver.execute_script("return document.querySelector('.lineage svg').textContent")
            assert all(s in text for s in STAGES)
            assert console_errors(driver) == []
            _shot(driver, "run-report.png", 4200)

            # the manual deployment's Run form: typed fields, each description with the field's bounds
            from mnist_pipeline.config import PipelineConfig
            from mnist_pipeline.deployments.serve import MANUAL, build_deployments

            with temporary_settings({PREFECT_API_URL: url}):
                manual = next(d for d in build_deployments(PipelineConfig()) if d.name == MANUAL)
                deployment_id = manual.apply()
            driver.set_window_size(1400, 1000)
            driver.get(f"{ui}/deployments/deployment/{deployment_id}/run")
            text = wait_for(lambda: (lambda t: t if "Passes over the training split" in t else None)(
                driver.execute_script("return document.body.innerText")), 60, "the Run form's fields")
            for line in ("Passes over the training split. (allowed: 1 to 1000)",
                         "Adam learning rate. (allowed: more than 0, at most 10)", "Retrain even when"):
                assert line in text, line
            _shot(driver, "prefect-ui-run-form.png", 2200)
