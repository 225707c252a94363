"""`RecordingWandb`: an in-memory W&B behind the same `WandbBackend` Protocol as the real client.

`sync --dry-run` sends its calls here (and prints them in order); the tests use it to rehearse a W&B
that already holds part of the lineage, or fails at one call.
"""

from __future__ import annotations

import copy
from pathlib import Path

from prefect_wandb.hashing import md5_b64
from prefect_wandb.records import WandbVersion
from prefect_wandb.refs import digest_alias, wandb_path, wandb_ref
from prefect_wandb.wandb.run_file import offline_records, offline_run_file


class RecordingWandb:
    """Records, in order, every call that `sync` or `audit --online` would send, and answers from an in-memory
    W&B: the runs it holds, each run's declared inputs, artifact versions with their aliases. An upload reads
    the offline run file to learn which artifact versions (and aliases) it would create, as the real one does.
    `fail={"upload": RuntimeError(...)}` makes a method raise, to rehearse partial failures."""

    def __init__(self, entity: str = "(default entity)", *, runs=(), inputs: dict | None = None,
                 artifacts: dict | None = None, fail: dict | None = None):
        self.entity = entity
        self.calls: list[tuple] = []
        self.runs: set[str] = set(runs)  # run ids
        self.inputs: dict[str, set[str]] = {k: set(v) for k, v in (inputs or {}).items()}
        self.artifacts: dict[str, dict] = dict(artifacts or {})  # "name:sha256-…" -> lookup_artifact's answer
        self.fail = dict(fail or {})
        self.links: dict[str, str] = {}  # registry path -> ref

    @classmethod
    def as_the_store_left_it(cls, store) -> RecordingWandb:
        """The W&B a dry run of `sync` starts from: the runs recorded online, and the versions they produced that W&B
        committed (no upload gap stands for them), so that the plan's alias moves onto such a version (a promotion
        recorded offline later) are rehearsed against it instead of failing as 'not found'."""
        runs = {r.run_id: r for r in store.runs()}
        unsent = {cls._key(g.ref) for g in store.wandb_gaps() if g.action == "upload"}
        artifacts = {}
        for art in store.artifacts():
            producer = runs.get(art.producer_run_id)
            key = f"{art.name}:{digest_alias(art.digest)}"
            if producer is not None and producer.wandb_mode == "online" and key not in unsent:
                artifacts[key] = {"version": f"v{art.version}", "aliases": ["latest", digest_alias(art.digest)],
                                  "logged_by": producer.run_id, "used_by": [], "files": {}}
        return cls(runs=[r for r, run in runs.items() if run.wandb_mode == "online"], artifacts=artifacts)

    def _call(self, *call):
        self.calls.append(call)
        if call[0] in self.fail:
            raise self.fail[call[0]]

    @staticmethod
    def _key(ref: str) -> str:
        return ref.rsplit("/", 1)[-1]

    def check(self) -> str:
        self._call("check")
        return self.entity

    def run_exists(self, entity, project, run_id) -> bool:
        self._call("run_exists", wandb_path(entity, project, run_id))
        return run_id in self.runs

    def upload(self, run_dir, entity, project, run_id) -> str | None:
        self._call("upload", str(run_dir), entity, project)
        self.runs.add(run_id)
        run_file = offline_run_file(Path(run_dir))
        if run_file is not None:
            for rec in offline_records(run_file):
                if rec.WhichOneof("record_type") == "artifact" and rec.artifact.type != "run_table":
                    for alias in rec.artifact.aliases:
                        if alias.startswith("sha256-"):
                            self.artifacts.setdefault(f"{rec.artifact.name}:{alias}", {
                                "version": f"v{len(self.artifacts)}", "aliases": list(rec.artifact.aliases),
                                "logged_by": run_id, "used_by": [],
                                "files": {e.path: e.digest for e in rec.artifact.manifest.contents}})
        return None

    def run_inputs(self, entity, project, run_id) -> set[str]:
        self._call("run_inputs", wandb_path(entity, project, run_id))
        return set(self.inputs.get(run_id, set()))

    def declare_inputs(self, entity, project, run_id, refs) -> None:
        self._call("declare_inputs", wandb_path(entity, project, run_id), tuple(refs))
        self.inputs.setdefault(run_id, set()).update(self._key(r) for r in refs)
        for r in refs:
            art = self.artifacts.get(self._key(r))
            if art is not None and run_id not in art["used_by"]:
                art["used_by"].append(run_id)

    def log_artifact(self, entity, project, run_id, *, name, type, path, metadata, digest) -> None:
        ref = wandb_ref(entity, project, name, digest)
        self._call("log_artifact", ref, wandb_path(entity, project, run_id))
        self.artifacts.setdefault(self._key(ref), {
            "version": f"v{len(self.artifacts)}", "aliases": ["latest", digest_alias(digest)], "logged_by": run_id,
            "used_by": [], "files": {f.relative_to(path).as_posix(): md5_b64(f)
                                     for f in sorted(Path(path).rglob("*")) if f.is_file()}})

    def add_aliases(self, ref, aliases) -> list[str]:
        self._call("add_aliases", ref, tuple(aliases))
        art = self.artifacts.get(self._key(ref))
        if art is None:
            raise ValueError(f"artifact {ref} not found")
        missing = [a for a in aliases if a not in art["aliases"]]
        for a in missing:  # an alias names one version per collection: it moves
            name = self._key(ref).split(":")[0]
            for key, other in self.artifacts.items():
                if key.split(":")[0] == name and a in other["aliases"]:
                    other["aliases"].remove(a)
            art["aliases"].append(a)
        return missing

    def link_artifact(self, ref, registry_path, aliases) -> None:
        self._call("link_artifact", ref, registry_path, tuple(aliases))
        if self._key(ref) not in self.artifacts:
            raise ValueError(f"artifact {ref} not found")
        self.links[registry_path] = ref

    def lookup_artifact(self, ref) -> WandbVersion | None:
        self._call("lookup_artifact", ref)
        art = self.artifacts.get(self._key(ref))
        return None if art is None else WandbVersion(ref=ref, **copy.deepcopy(art))
