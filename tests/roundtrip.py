"""Helpers of the W&B round-trip tests (`test_wandb_roundtrip`, `test_sync_online`, `test_alias_sync_online`,
`test_sweep_online`): the real CLI in a process of its own against the W&B stand-in (wandb's process-wide settings
keep the first host a process saw), and what W&B holds read back through its public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect_wandb.refs import digest_alias
from prefect_wandb.store import LineageStore
from tests.wandb_standin import Standin

REPO = Path(__file__).resolve().parents[1]
PROJECT = "mnist-lineage"
FAST = ["--wandb-init-timeout", "20", "--wandb-http-timeout", "10", "--wandb-http-retries", "2",
        "--wandb-artifact-wait-timeout", "30", "--wandb-finish-timeout", "30"]


def env_for(base: Path, w: Standin, **extra: str) -> dict:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PREFECT_")) and k != "NETRC"}
    for d in ("home", "tmp", "wandb"):
        (base / d).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(base / "home"), TMPDIR=str(base / "tmp"), WANDB_DIR=str(base / "wandb"),
               WANDB_SILENT="true", PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO), WANDB_BASE_URL=w.url, WANDB_API_KEY=w.api_key)
    env.update(extra)
    return env


def cli(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnist_pipeline.cli.main", *args], cwd=env["HOME"], env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_args(base: Path, src: Path, mode: str, *extra: str) -> list[str]:
    return ["run", "--source", "local", "--local-dir", str(src), "--slice", "1", "--epochs", "1",
            "--batch-size", "16", "--root", str(base / "data"), "--artifacts-dir", str(base / "art"),
            "--lineage-db", str(base / "lineage.db"), "--onnx-latency-samples", "10", "--onnx-throughput-batch",
            "16", "--evaluate-misclassified-table-rows", "4", "--threads", "1", "--no-watch",
            "--wandb-mode", mode, *FAST, *extra]


def api(w: Standin):
    import wandb

    return wandb.Api(api_key=w.api_key, overrides={"base_url": w.url}, timeout=30)


def ref_of(art) -> str:
    return f"{PROJECT}/{art.name}:{digest_alias(art.digest)}"


def wandb_graph(w: Standin, store: LineageStore) -> dict:
    """What W&B holds for every version of the store, keyed by `name:vN` of the store, with run ids replaced by
    job types: {"version", "aliases" (sha256 alias as 'sha256'), "logged_by", "used_by"}."""
    a = api(w)
    jobs = {r.run_id: r.job_type for r in store.runs()}
    out = {}
    for art in store.artifacts():
        got = a.artifact(ref_of(art))
        assert digest_alias(art.digest) in got.aliases, (art.label, got.aliases)
        out[art.label] = {"version": got.version,
                          "aliases": sorted("sha256" if x.startswith("sha256-") else x for x in got.aliases),
                          "logged_by": jobs.get(got.logged_by().id, got.logged_by().id),
                          "used_by": sorted(jobs.get(r.id, r.id) for r in got.used_by())}
    return out


def store_graph(store: LineageStore) -> dict:
    jobs = {r.run_id: r.job_type for r in store.runs()}
    return {a.label: {"logged_by": jobs[a.producer_run_id],
                      "used_by": sorted(jobs[r] for r in store.consumers(a.artifact_id)
                                        if store.run(r).status == "finished")}
            for a in store.artifacts()}


WRITES = ("UpsertBucket", "CreateArtifact", "CreateArtifactManifest", "CreateArtifactFiles", "CommitArtifact",
          "UseArtifact", "AddAliases", "DeleteAliases", "UpdateArtifact", "LinkArtifact", "file_stream", "upload")


def writes(w: Standin) -> dict[str, int]:
    return {op: w.count(op) for op in WRITES if w.count(op)}


def versions_of(w: Standin) -> dict[str, list[str]]:
    """Every artifact collection of the stand-in and its versions, as W&B numbers them."""
    return {k.rsplit("/", 1)[1]: [v["version"] for v in c["versions"]]
            for k, c in w.state()["collections"].items() if c["kind"] != "portfolio"}


def registry(w: Standin) -> dict[str, list[str]]:
    """The stand-in's registry collections: per collection, the version digests with their aliases there."""
    state = w.state()
    out = {}
    for key, c in state["collections"].items():
        if c["kind"] == "portfolio":
            out[key.rsplit("/", 1)[1]] = sorted((v["digest"], tuple(sorted(v["aliases"]))) for v in c["versions"])
    return out


def standin_version(w: Standin, art) -> dict:
    """The stand-in's own record of a stored version (W&B numbers versions as the store does, scenario 1)."""
    c = w.model.collection(w.entity, PROJECT, art.name, "sequence") or w.model.collection(w.entity, PROJECT, art.name)
    return w.model.data["artifacts"][c["members"][art.version]]
