"""The audit's walk: from the subject back to the data (producing runs, their inputs, recursively) and forward to
the runs made only from what is already in the picture (evaluations, validations)."""

from __future__ import annotations

from prefect_wandb.audit.entries import TreeArtifact, TreeRun
from prefect_wandb.store import ArtifactRecord, LineageStore, RunRecord


class Walk:
    def __init__(self, store: LineageStore):
        self.store = store
        self.arts: dict[int, ArtifactRecord] = {}
        self.roles: dict[int, str] = {}
        self.runs: dict[str, RunRecord | None] = {}  # None: a run the store does not hold
        self.used: dict[str, list[ArtifactRecord]] = {}
        self.produced: dict[str, list[ArtifactRecord]] = {}
        self.upstream_runs: list[str] = []
        self.downstream_runs: list[str] = []

    def _run(self, run_id: str) -> None:
        if run_id not in self.runs:
            self.runs[run_id] = self.store.run(run_id)
            edges = self.store.edges(run_id)
            self.used[run_id], self.produced[run_id] = edges.used, edges.produced

    def _add(self, rec: ArtifactRecord, role: str) -> None:
        self.arts.setdefault(rec.artifact_id, rec)
        self.roles.setdefault(rec.artifact_id, role)

    def upstream(self, rec: ArtifactRecord, seen: set, role: str = "upstream") -> TreeArtifact:
        """The nested tree artifact -> producing runs -> their inputs -> ..., each node expanded once."""
        self._add(rec, role)
        if ("a", rec.artifact_id) in seen:
            return TreeArtifact(rec.label, [], repeat=True)
        seen.add(("a", rec.artifact_id))
        node = TreeArtifact(rec.label, [])
        for run_id in self.store.producers(rec.artifact_id) or [rec.producer_run_id]:
            self._run(run_id)
            if ("r", run_id) in seen:
                node.produced_by.append(TreeRun(run_id, [], repeat=True))
                continue
            seen.add(("r", run_id))
            if run_id not in self.upstream_runs:
                self.upstream_runs.append(run_id)
            node.produced_by.append(TreeRun(run_id, [self.upstream(u, seen) for u in self.used[run_id]]))
        return node

    def downstream(self, subjects: set[int]) -> None:
        """Runs that consumed only what is already in the picture (the subject, its ancestors and what was made
        from them): evaluations, ONNX validations, the promotion, whose one input from outside may be the metrics
        its decision about a model in the picture compared with (production's, `production_metrics_id`). A run
        that merely shares the raw dataset (another training) is not about this model, nor is one that made a
        sibling version of an artifact in the chain."""
        closure = set(self.arts)
        chain_names = {a.name: a.artifact_id for a in self.arts.values()}
        sources = {aid for aid in closure
                   if all(not self.used[r] for r in self.store.producers(aid) if r in self.used)}
        compared: dict[int, set[int]] = {}  # production's metrics -> the models whose decisions compared with them
        for decision in self.store.promotions():
            if decision.production_metrics_id is not None:
                compared.setdefault(decision.production_metrics_id, set()).add(decision.artifact_id)
        changed = True
        while changed:
            changed = False
            candidates = []
            for aid in sorted(closure):
                for run_id in self.store.consumers(aid):
                    if run_id not in self.upstream_runs and run_id not in self.downstream_runs \
                            and run_id not in candidates:
                        candidates.append(run_id)
            for run_id in candidates:
                self._run(run_id)
                used_ids = {u.artifact_id for u in self.used[run_id]}
                inside, outside = used_ids & closure, used_ids - closure
                if not all(compared.get(a, set()) & closure for a in outside):
                    continue
                if not any(a in subjects or a not in sources for a in inside):
                    continue
                if any(p.name in chain_names and p.artifact_id != chain_names[p.name]
                       for p in self.produced[run_id]):
                    continue
                self.downstream_runs.append(run_id)
                for p in self.produced[run_id]:
                    self._add(p, "downstream")
                    closure.add(p.artifact_id)
                changed = True


