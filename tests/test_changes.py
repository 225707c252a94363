"""mnist_pipeline/changes.py: the skip decided from the lineage store alone, before Prefect starts (`mnist-pipeline
run` without a configured Prefect API), on the session's offline run (read only; a source file's mtime is put
back). The whole command's unchanged rerun without a server is in tests/test_performance.py."""

from __future__ import annotations

import os

import pytest

from mnist_pipeline import changes
from mnist_pipeline.results import DatasetInfo
from prefect_wandb import LineageStore, where_records_went
from tests.helpers import offline_run_argv

pytestmark = pytest.mark.slow  # the session's offline run: a Prefect server


def _config(offline_run: dict, *extra: str):
    """The config `mnist-pipeline run` built for the offline run (the same flags), with `extra` flags after them."""
    from mnist_pipeline.cli.args import load_config
    from mnist_pipeline.cli.main import _parser

    cfg = load_config(_parser().parse_args([*offline_run_argv(offline_run["src"], offline_run["base"]), *extra]))
    return cfg.resolved()


def test_the_dataset_records_the_sources_it_was_prepared_from(offline_run):
    info = DatasetInfo.from_metadata(offline_run["arts"]["dataset"].metadata)
    assert info.prepared_from == changes.source_key(_config(offline_run))
    assert info.prepared_from != changes.source_key(_config(offline_run, "--slice", "2"))


def test_an_unchanged_run_is_told_from_the_store_and_anything_else_goes_ahead(offline_run):
    arts = offline_run["arts"]
    found = changes.unchanged_before_prefect(_config(offline_run))
    assert found is not None
    check, dataset = found
    assert check.action == "skip" and check.production == arts["model"].label, check
    assert dataset.digest == arts["dataset"].digest
    cfg = _config(offline_run)
    summary = changes.skipped(cfg, check, dataset, {}, where_records_went(LineageStore(cfg.lineage_db), None))
    assert summary.status == "skipped" and summary.reason.startswith("training skipped: ")
    assert summary.artifacts["dataset"].ref == arts["dataset"].label

    assert changes.unchanged_before_prefect(_config(offline_run, "--force")) is None
    assert changes.unchanged_before_prefect(_config(offline_run, "--learning-rate", "0.001")) is None  # changed
    assert changes.unchanged_before_prefect(_config(offline_run, "--slice", "2")) is None  # not prepared yet
    # a source file touched: its dataset must be prepared again (and hashed) before anything is decided
    source = next(p for p in offline_run["src"].rglob("*") if p.is_file())
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert changes.unchanged_before_prefect(_config(offline_run)) is None
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert LineageStore(offline_run["db"]).runs() == offline_run["store"].runs()  # it recorded nothing
