"""prefect_wandb: traceable artifact lineage for Prefect flows, in a lineage store and in W&B Artifacts.

A stage is a Prefect task that is one W&B run and one run of the lineage store:

    from prefect import flow, task
    from prefect_wandb import LineageSettings, open_stage

    SETTINGS = LineageSettings(store="runs/lineage.db", artifacts="runs/artifacts")

    @task
    def fit(data):                                   # data: an ArtifactRef another stage produced
        with open_stage(SETTINGS, "fit", config={"alpha": 0.1}) as stage:
            rows = stage.use(data) / "rows.csv"      # re-verified by sha256 before use
            out = stage.staging("model")             # staged: committed only if the stage succeeds
            (out / "model.json").write_text(...)
            stage.produce("model", "model", out, {"fingerprint": {"alpha": 0.1}})
        return stage.outputs["model"]                # an ArtifactRef: name, version, digest, path

Everything a caller uses is exported here (`__all__`); other modules are the implementation. The names load on
first use, so that `import prefect_wandb` costs nothing (`verify` runs on a host with neither Prefect nor wandb).
docs/library.md is the guide.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_WHERE = {
    # where lineage goes
    "LineageSettings": "settings", "WandbSettings": "settings", "LineageBlock": "block", "confine": "settings", "allowed_roots": "settings",
    "ConfinementError": "settings",
    # a store location: a path (SQLite) or a PostgreSQL URL whose password never shows
    "StoreURL": "locations", "StoreLocationField": "locations", "LocationError": "locations",
    "store_location": "locations", "path_only": "locations", "masked_location": "locations", "redact": "locations",
    "scrub_argv": "locations",
    # a stage: one W&B run and one run of the store, inputs verified, outputs staged and committed on success
    "open_stage": "stage", "Stage": "stage", "record_lost_run": "stage",
    # where a recorded version's files are on this host (a folder, or an S3 version's verified cache copy)
    "local_folder": "artifact_files", "ArtifactsLocationField": "artifact_files",
    "RemoteArtifactsError": "artifact_files",
    "ArtifactRef": "records", "DigestMismatch": "refs", "manifest": "refs", "manifest_digest": "refs",
    "verify_files": "refs",
    # the store and its records
    "LineageStore": "store", "StoreError": "store", "ArtifactDeleted": "store", "ArtifactRecord": "store",
    "RunRecord": "store", "RunEdges": "store", "PromotionRecord": "store",
    # stages on other processes (a sweep's trials on Dask workers): records journaled, committed by the flow
    "JournalStore": "journal", "JournalEntry": "journal", "commit_journal": "journal",
    # policy: the promotion gate and the skip rule
    "GatePolicy": "promotion", "Decision": "promotion", "Signature": "promotion", "promote": "promotion",
    "measured_on": "promotion", "ChangeCheck": "skip", "compare_with_production": "skip",
    # reading the store back; where a flow run's W&B records went
    "evaluations": "queries", "where_records_went": "queries", "WandbWhereabouts": "queries",
    "code_state": "environment",
    "wandb_records": "wandb.where", "stored_folders": "layout",
    # a flow run holds what it uses (gc leaves it alone) until it ends
    "hold_artifact": "holds", "release_holds": "holds",
    # reproduce: job type -> the pure function that rebuilds that stage's files
    "Replay": "reproduce", "Rebuild": "reproduce", "CannotReproduce": "reproduce",
    # the lineage picture (Graphviz dot)
    "lineage_graph": "picture", "render_svg": "picture", "LineageGraph": "picture",
    # HTML pages: Jinja2, autoescaped, templates in a package's templates/ folder
    "render_template": "templating",
    # files written so that a full disk says where, and nothing is half-written
    "StorageError": "storage", "write_json": "storage", "write_bytes_atomic": "storage",
}

__all__ = ["ArtifactDeleted", "ArtifactRecord", "ArtifactRef", "ArtifactsLocationField", "CannotReproduce", "ChangeCheck", "ConfinementError",
           "Decision", "DigestMismatch", "GatePolicy", "JournalEntry", "JournalStore", "LineageBlock",
           "LineageGraph", "LineageSettings", "LineageStore", "LocationError", "PromotionRecord", "Rebuild", "RemoteArtifactsError", "Replay", "RunEdges", "RunRecord",
           "Signature", "Stage", "StorageError", "StoreError", "StoreLocationField", "StoreURL", "WandbSettings", "WandbWhereabouts", "allowed_roots", "code_state",
           "commit_journal", "compare_with_production", "confine", "evaluations", "hold_artifact", "lineage_graph",
           "local_folder", "manifest", "manifest_digest", "masked_location", "measured_on", "open_stage", "path_only", "promote",
           "record_lost_run", "redact", "release_holds", "render_svg", "render_template", "scrub_argv", "store_location",
           "stored_folders", "verify_files", "wandb_records", "where_records_went",
           "write_bytes_atomic", "write_json"]

if TYPE_CHECKING:
    from prefect_wandb.artifact_files import ArtifactsLocationField, RemoteArtifactsError, local_folder
    from prefect_wandb.block import LineageBlock
    from prefect_wandb.environment import code_state
    from prefect_wandb.holds import hold as hold_artifact
    from prefect_wandb.holds import release as release_holds
    from prefect_wandb.journal import Entry as JournalEntry
    from prefect_wandb.journal import JournalStore, commit_journal
    from prefect_wandb.layout import stored_folders
    from prefect_wandb.locations import (
        LocationError,
        StoreLocationField,
        StoreURL,
        path_only,
        redact,
        scrub_argv,
        store_location,
    )
    from prefect_wandb.locations import masked as masked_location
    from prefect_wandb.picture import Graph as LineageGraph
    from prefect_wandb.picture import lineage_graph, render_svg
    from prefect_wandb.promotion import Decision, GatePolicy, Signature, measured_on, promote
    from prefect_wandb.queries import WandbWhereabouts, evaluations, where_records_went
    from prefect_wandb.records import ArtifactRef
    from prefect_wandb.refs import DigestMismatch, manifest, manifest_digest, verify_files
    from prefect_wandb.reproduce import CannotReproduce, Rebuild, Replay
    from prefect_wandb.settings import ConfinementError, LineageSettings, WandbSettings, allowed_roots, confine
    from prefect_wandb.skip import ChangeCheck, compare_with_production
    from prefect_wandb.stage import Stage, open_stage, record_lost_run
    from prefect_wandb.storage import StorageError, write_bytes_atomic, write_json
    from prefect_wandb.store import (
        ArtifactDeleted,
        ArtifactRecord,
        LineageStore,
        PromotionRecord,
        RunEdges,
        RunRecord,
        StoreError,
    )
    from prefect_wandb.templating import render as render_template
    from prefect_wandb.wandb.where import wandb_records

_ALIASES = {"JournalEntry": "Entry", "hold_artifact": "hold", "release_holds": "release", "LineageGraph": "Graph",
            "render_template": "render",
            "masked_location": "masked"}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'prefect_wandb' has no attribute {name!r}")
    value = getattr(import_module(f"prefect_wandb.{where}"), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
