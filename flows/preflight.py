"""What the flow checks about its parameter before any task runs.

1. A run started through a deployment with a partial `config` (`{"train": {"seed": 1}}` from the API or UI)
   gets the deployment's defaults for everything it did not set (Prefect replaces a whole parameter, it does not
   merge it), and its log says which values came from where.
2. A run started through a deployment is confined to the locations the deployment was served with: every path of
   its config must lie inside the operator's roots ($MNIST_PIPELINE_ALLOWED_ROOTS, e.g. `serve --allowed-roots`),
   or else inside the folders of the deployment's own default config (data, artifacts, store, W&B).
3. Every folder the run will write to (data, artifacts, the store's folder, W&B's folder) is writable: an
   unwritable one fails here with one line, instead of wandb quietly writing to $TMPDIR.
4. The lineage store is readable, and is not missing or empty beside artifact folders it once recorded; an S3
   artifacts location's bucket exists and answers.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel

from mnist_pipeline.config import PipelineConfig, allowed_roots
from prefect_wandb import LineageStore, StoreError, storage, stored_folders

log = logging.getLogger(__name__)

RUN, DEPLOYMENT, DEFAULT = "run parameters", "deployment defaults", "code defaults"


def explicit_values(model: BaseModel) -> dict:
    """The fields a payload actually set (pydantic's `model_fields_set`, recursively), as JSON values."""
    out = {}
    for name in model.model_fields_set:
        value = getattr(model, name)
        out[name] = explicit_values(value) if isinstance(value, BaseModel) else \
            model.model_dump(mode="json", include={name})[name]
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def merge_with_defaults(config: PipelineConfig, defaults: dict | None) -> tuple[PipelineConfig, dict[str, str]]:
    """(the config with `defaults` under what the payload set, where each leaf value came from)."""
    given = explicit_values(config)
    merged = PipelineConfig.model_validate(_merge(defaults or {}, given)) if defaults else config
    given_leaves, default_leaves = _leaves(given), _leaves(defaults or {})
    sources = {}
    for key in _leaves(merged.model_dump(mode="json")):
        if key in given_leaves and (key not in default_leaves or given_leaves[key] != default_leaves[key]):
            sources[key] = RUN
        elif key in default_leaves:
            sources[key] = DEPLOYMENT
        else:
            sources[key] = DEFAULT
    return merged, sources


def describe_sources(sources: dict[str, str], cfg: PipelineConfig) -> str:
    flat = _leaves(cfg.model_dump(mode="json"))
    parts = []
    for origin in (RUN, DEPLOYMENT):
        keys = sorted(k for k, o in sources.items() if o == origin)
        if keys:
            parts.append(f"from the {origin}: " + ", ".join(f"{k}={flat[k]!r}" for k in keys))
    parts.append(f"{sum(o == DEFAULT for o in sources.values())} value(s) from the {DEFAULT}")
    return "; ".join(parts)


def locations(cfg: PipelineConfig) -> dict[str, Path]:
    """The folders a run of `cfg` reads or writes, by the field that names them."""
    out = {"data.root": cfg.data.root, "artifacts_dir": cfg.artifacts_folder()}  # S3: its cache on this host
    if isinstance(cfg.lineage_db, Path):  # a store in a database has no folder
        out["lineage_db"] = cfg.lineage_db.parent
    out["wandb.dir"] = cfg.lineage().wandb_folder()
    if cfg.data.local_dir is not None:
        out["data.local_dir"] = cfg.data.local_dir
    return out


def deployment_roots(defaults: dict | None) -> list[Path]:
    """The folders of a deployment's own default config (resolved against this working directory)."""
    resolved = PipelineConfig.model_validate(defaults or {}).resolved()
    return sorted({p.resolve() for p in locations(resolved).values()})


def check_writable(cfg: PipelineConfig) -> None:
    """Each folder a run writes to can be written; StorageError naming the field and folder otherwise."""
    for field, folder in locations(cfg).items():
        if field != "data.local_dir":
            storage.check_writable(folder, field)


def artifact_folders(artifacts_dir: Path) -> list[Path]:
    """Stored artifact folders (`<type>/<name>/<digest[:16]>`), which only a lineage store can vouch for."""
    return stored_folders(artifacts_dir)


def check_store(cfg: PipelineConfig) -> None:
    """A missing or empty store beside stored artifacts would silently restart history at v0 (and the audit
    would lose every earlier record): refuse. A damaged store is named. StoreError either way."""
    db = cfg.lineage_db
    if not isinstance(db, Path):  # a database: reached and given its schema now (StoreError in one line if not)
        LineageStore(db)
        return
    if db.is_file() and db.stat().st_size > 0:
        # StoreError if it is not a readable lineage store; a store without its tables yet may be one another run
        # is creating this moment (its schema is written in one transaction after the file exists): wait for it
        for attempt in range(50):
            try:
                LineageStore(db, readonly=True)
                return
            except StoreError as e:
                if "no runs/artifacts tables" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.2)
    found = artifact_folders(cfg.artifacts_folder())  # S3: the versions this host's cache holds
    if found:
        state = "empty (0 bytes)" if db.is_file() else "missing"
        raise StoreError(
            f"the lineage store {db} is {state}, but {cfg.artifacts_folder()} holds {len(found)} artifact folder(s) "
            f"that an earlier store recorded (e.g. {found[0]}): restore {db.name} from a backup; to start a new "
            f"history deliberately, move {cfg.artifacts_folder()} aside (or give another --artifacts-dir)")


def _deployment() -> tuple[str, dict] | None:
    """(name, default `config` parameter) of the deployment this flow run was started from, if any."""
    from prefect.runtime import deployment

    dep_id = deployment.get_id()
    if not dep_id:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment(dep_id)
    return dep.name, dict(dep.parameters or {}).get("config") or {}


def effective_config(config: PipelineConfig, logger: logging.Logger | logging.LoggerAdapter = log
                     ) -> tuple[PipelineConfig, dict[str, str]]:
    """(the resolved config a flow run will use, after the three checks of this module; where each value came
    from, by dotted field name, for a run started through a deployment, else empty)."""
    dep = _deployment()
    sources: dict[str, str] = {}
    if dep is not None:
        name, defaults = dep
        config, sources = merge_with_defaults(config, defaults)
        logger.info("config of deployment %r: %s", name, describe_sources(sources, config))
    cfg = config.resolved()  # checks $MNIST_PIPELINE_ALLOWED_ROOTS when the operator set it
    if dep is not None and allowed_roots() is None:
        roots = deployment_roots(dep[1])
        cfg.check_roots(roots, why=f"the folders deployment {dep[0]!r} was served with; an operator widens them "
                                   "with $MNIST_PIPELINE_ALLOWED_ROOTS or `serve --allowed-roots`")
    check_writable(cfg)
    cfg.lineage().check_artifacts()
    check_store(cfg)
    return cfg, {k: o for k, o in sorted(sources.items()) if o != DEFAULT}
