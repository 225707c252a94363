"""The dataset both flows start from: prepared (or taken from Prefect's cache), and prepared again from the source
when the cached one cannot be used as stored (no longer recorded, deleted by gc, or its files changed)."""

from __future__ import annotations

from mnist_pipeline.config import PipelineConfig
from mnist_pipeline.lineage.refs import ArtifactRef
from mnist_pipeline.tasks.prepare_data import for_config, stored_problem


def ensure_dataset(cfg: PipelineConfig, logger) -> ArtifactRef:
    """prepare-data with `cfg.data`'s retries and time limit; the dataset it returns is verified against its record
    here, since the skip rule and training vouch for it."""
    prepare = for_config(cfg)
    dataset = prepare(cfg)
    problem = stored_problem(cfg, dataset)
    if problem:
        logger.warning("dataset %s: %s; preparing it again from the source", dataset.label, problem)
        dataset = prepare.with_options(refresh_cache=True)(cfg)
    return dataset
