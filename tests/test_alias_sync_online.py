"""Aliases in W&B follow the lineage store (`prefect_wandb/alias_sync.py`, the gate, rollback), against the
stateful W&B stand-in: promotion and rollback move `production` (and its registry link, replayed by `sync`), two
flows online at once leave each alias where the store has it. The real flow and CLI: the two flows at once in
processes of their own, the rest called in this process (`tests.wandb_inprocess.cli_here`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_wandb.store import LineageStore
from tests.helpers import write_mnist
from tests.roundtrip import (
    PROJECT,
    api,
    env_for,
    ref_of,
    registry,
    run_args,
    versions_of,
    writes,
)
from tests.wandb_inprocess import cli_here
from tests.wandb_standin import Standin

pytestmark = pytest.mark.slow


def test_promotion_and_rollback_move_production_in_wandb_and_sync_replays_a_failed_registry_link(
        prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    reg = ["--promotion-registry-path", "wandb-registry-model/mnist"]
    with Standin() as w:
        env = env_for(tmp_path, w)
        db = str(tmp_path / "lineage.db")
        first = cli_here(env, *run_args(tmp_path, tmp_path / "src", "online", "--learning-rate", "1e-6", *reg))
        assert first.returncode == 0, first.stderr[-4000:]
        store = LineageStore(db)
        [v0] = store.artifacts("model")
        a = api(w)
        assert "production" in a.artifact(ref_of(v0)).aliases
        # linked into the registry with its aliases, not only `latest`
        [(digest, aliases)] = registry(w)["mnist"]
        assert "production" in aliases and digest == a.artifact(ref_of(v0)).digest

        w.fail("LinkArtifact", "graphql-error")  # the next promotion's link fails; its aliases reach W&B
        second = cli_here(env, *run_args(tmp_path, tmp_path / "src", "online", "--learning-rate", "0.01", "--epochs",
                                         "4", *reg))
        assert second.returncode == 0, second.stderr[-4000:]
        v1 = next(m for m in store.artifacts("model") if m.version == 1)
        assert store.alias(v1.name, "production").artifact_id == v1.artifact_id
        a = api(w)
        assert "production" in a.artifact(ref_of(v1)).aliases  # moved off the old version
        assert "production" not in a.artifact(ref_of(v0)).aliases
        assert [g.call for g in store.wandb_gaps() if g.action == "aliases"] == ["registry link"]
        assert len(registry(w)["mnist"]) == 1  # the link did not happen

        s = cli_here(env, "sync", "--lineage-db", db)
        assert s.returncode == 0, s.stdout + s.stderr
        assert "linked into wandb-registry-model/mnist" in s.stdout
        linked = dict(registry(w)["mnist"])
        assert "production" in linked[a.artifact(ref_of(v1)).digest]
        assert "production" not in linked[a.artifact(ref_of(v0)).digest]
        before = writes(w)
        assert cli_here(env, "sync", "--lineage-db", db).returncode == 0 and writes(w) == before  # replayed once

        rb = cli_here(env, "rollback", "--wandb-mode", "online", "--lineage-db", db, "--reason", "round trip")
        assert rb.returncode == 0, rb.stdout + rb.stderr
        a = api(w)
        assert "production" in a.artifact(ref_of(v0)).aliases
        assert "production" not in a.artifact(ref_of(v1)).aliases
        v = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 0, v.stdout + v.stderr

        # W&B disagreeing: `production` on the other version there
        c = w.model.collection(w.entity, PROJECT, v0.name)
        with w.lock:
            c["aliases"]["production"] = c["members"][1]
        v = cli_here(env, "sync", "--verify", "--lineage-db", db)
        assert v.returncode == 3, v.stdout + v.stderr
        [line] = [x for x in v.stdout.splitlines() if x.strip().startswith("alias")]
        assert v0.label in line and "alias 'production' is on this version in the lineage store" in line
        onnx = next(o for o in store.artifacts("onnx")
                    if v0.artifact_id in [u.artifact_id for u in store.edges(o.producer_run_id).used])
        au = cli_here(env, "audit", "--online", "--json", "--lineage-db", db, str(next(Path(onnx.path).glob("*.onnx"))))
        assert au.returncode == 3, au.stdout[-3000:] + au.stderr
        [failure] = json.loads(au.stdout)["failures"]
        assert failure["artifact"] == v0.label and "alias 'production' is on" in failure["detail"]


def test_two_flows_online_at_once_log_each_version_once_and_aliases_end_where_the_store_says(prefect_server, tmp_path):
    write_mnist(tmp_path / "src")
    with Standin() as w:
        env = env_for(tmp_path, w)
        procs = [subprocess.Popen([sys.executable, "-m", "mnist_pipeline.cli.main",
                                   *run_args(tmp_path, tmp_path / "src", "online", "--seed", str(seed))],
                                  cwd=env["HOME"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for seed in (1, 2)]
        outs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-3000:] for o in outs]
        store = LineageStore(tmp_path / "lineage.db")
        assert len(store.artifacts("model")) == 2 and len(store.artifacts("dataset")) == 1
        # on a loaded machine a stage of either flow may have missed its W&B init timeout and recorded offline
        # (W&B is an observer): `sync` sends what W&B missed, and must not log anything twice either
        s = cli_here(env, "sync", "--lineage-db", str(tmp_path / "lineage.db"))
        assert s.returncode == 0, s.stdout + s.stderr
        # every stored version is one W&B version, numbered as in the store; nothing logged twice
        names = {art.name for art in store.artifacts()}
        held = {n: vs for n, vs in versions_of(w).items() if n in names}
        assert held == {n: [f"v{a.version}" for a in store.artifacts() if a.name == n] for n in names}
        for n in names:  # and no two W&B versions of the same bytes
            c = w.model.collection(w.entity, PROJECT, n)
            digests = [w.model.data["artifacts"][aid]["digest"] for aid in c["members"]]
            assert len(digests) == len(set(digests)), n
        a = api(w)
        for alias in ("candidate", "production"):
            held = store.alias("convnet", alias)
            assert held is not None and alias in a.artifact(ref_of(held)).aliases, alias
        v = cli_here(env, "sync", "--verify", "--lineage-db", str(tmp_path / "lineage.db"))
        assert v.returncode == 0, v.stdout + v.stderr
