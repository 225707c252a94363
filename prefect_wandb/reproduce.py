"""Reproduce: re-run the recorded stages that made an artifact, in a scratch folder, and compare the files bit for bit
with the record (no Prefect, no W&B, no write to the store: a reproduction is a check, not a new version).

The pipeline registers how each of its job types rebuilds its files: `rebuilders`, job type -> a pure function
`rebuild(replay, out_dir)` that writes the output's files into `out_dir` from `replay` (the recorded run's config,
summary and environment, and its inputs' folders) and may return notes. `plan_reproduction(store, target,
rebuilders)` walks back from `target` through the runs whose job type is registered; the inputs of the first ones
are used as recorded (their files re-checked). `run` re-runs the plan; `compare` is the file-by-file verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect_wandb.artifact_files import local_folder, readable_folder
from prefect_wandb.hashing import sha256_file
from prefect_wandb.refs import manifest, manifest_digest
from prefect_wandb.store import ArtifactRecord, DeletionRecord, LineageStore


class CannotReproduce(Exception):
    """The target is not something reproduce can remake (no registered job type made it), or its record is short."""


@dataclass(frozen=True)
class Replay:
    """What a rebuild function gets: the recorded run (`config`, `summary`, `env`), the recorded output's
    `metadata`, `inputs` (artifact type -> the folder of that input's files: the recorded one, or the one re-made
    upstream in this reproduction) and `threads` (the operator's intra-op thread count, None: as recorded)."""

    job_type: str
    config: dict
    inputs: dict[str, Path]
    metadata: dict
    summary: dict
    env: dict
    threads: int | None = None


Rebuild = Callable[[Replay, Path], "list[str] | None"]


@dataclass
class Step:
    job_type: str
    run_id: str
    output: ArtifactRecord
    inputs: dict[str, ArtifactRecord]  # by type: dataset, model
    config: dict
    env: dict
    summary: dict

    def describe(self) -> dict:
        return {"job_type": self.job_type, "run_id": self.run_id, "output": self.output.label,
                "inputs": {k: v.label for k, v in self.inputs.items()}}


@dataclass
class ReproductionPlan:
    target: ArtifactRecord
    steps: list[Step]  # in execution order: upstream first, the target's last
    roots: list[ArtifactRecord]  # the recorded inputs used as they are

    @property
    def first(self) -> Step:
        return self.steps[0]


def _step(store: LineageStore, rec: ArtifactRecord) -> Step:
    run_id = rec.producer_run_id
    run = store.run(run_id)
    if run is None:
        raise CannotReproduce(f"{rec.label}: its producing run {run_id} is not in the lineage store")
    used = {u.type: u for u in store.edges(run_id).used}
    return Step(run.job_type, run_id, rec, used, run.config or {}, run.env or {}, run.summary or {})


def plan_reproduction(store: LineageStore, target: ArtifactRecord,
                      rebuilders: Mapping[str, Rebuild]) -> ReproductionPlan:
    """The recorded stages from `target`'s first non-rebuildable inputs (the roots) to `target`."""
    last = _step(store, target)
    if not rebuilders:
        raise CannotReproduce(f"{target.label}: no rebuild functions to re-run its stages with (give the pipeline's "
                              "mapping of job type -> rebuild function: --rebuilders MODULE:NAME)")
    if last.job_type not in rebuilders:
        raise CannotReproduce(f"{target.label} is a {target.type} made by a {last.job_type} run: reproduce re-runs "
                              f"{', '.join(sorted(rebuilders))} stages only (the others read the outside world or "
                              "record timings that never repeat)")
    steps: list[Step] = []
    roots: dict[int, ArtifactRecord] = {}

    def visit(step: Step) -> None:
        for rec in step.inputs.values():
            if any(s.output.artifact_id == rec.artifact_id for s in steps):
                continue
            run = store.run(rec.producer_run_id)
            if run is not None and run.job_type in rebuilders:
                visit(_step(store, rec))
            else:
                roots[rec.artifact_id] = rec
        steps.append(step)

    visit(last)
    if not roots:
        raise CannotReproduce(f"{steps[0].output.label}: its {steps[0].job_type} run {steps[0].run_id} recorded no "
                              "input")
    return ReproductionPlan(target, steps, list(roots.values()))


@dataclass
class Reproduction:
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def target(self) -> Comparison:
        return self.comparisons[-1]


def run(plan: ReproductionPlan, rebuilders: Mapping[str, Rebuild], scratch: Path, *,
        threads: int | None = None) -> Reproduction:
    """Re-run `plan` in `scratch` (one folder per step, named by its output's type), each step on its recorded
    inputs or on those re-made before it, and compare each output with its record."""
    out, made = Reproduction(), dict[int, Path]()
    for step in plan.steps:
        d = Path(scratch) / step.output.type
        if d.exists():
            d = d.with_name(f"{d.name}-{step.run_id}")
        d.mkdir(parents=True)
        replay = Replay(step.job_type, dict(step.config), {t: made.get(r.artifact_id, local_folder(r.path, r.files))
                                                            for t, r in step.inputs.items()},
                        dict(step.output.metadata), dict(step.summary), dict(step.env), threads)
        out.notes += rebuilders[step.job_type](replay, d) or []
        made[step.output.artifact_id] = d
        files = manifest(d)
        out.comparisons.append(compare(step.output, d, manifest_digest(files) if files else None))
    return out


def missing_inputs(plan: ReproductionPlan, deleted: dict[int, DeletionRecord] | None = None) -> list[str]:
    """The recorded inputs that are gone (deleted by gc, or missing/changed on disk), one line each."""
    deleted = deleted or {}
    out = []
    for rec in plan.roots:
        aid = rec.artifact_id
        if aid in deleted:
            d = deleted[aid]
            out.append(f"{rec.label}: deleted by gc on {d.deleted_at[:10]} by {d.deleted_by} ({rec.path})")
            continue
        base = readable_folder(rec.path, rec.files)
        for f in rec.files:
            p = base / f.relpath
            if not p.is_file():
                out.append(f"{rec.label}: {p} is missing")
            elif sha256_file(p) != f.sha256:
                out.append(f"{rec.label}: {p} no longer matches its recorded sha256")
    return out


def environment_differences(recorded: dict, current: dict) -> list[str]:
    """Warnings: the code commit, a dirty tree, package and Python versions that differ from the record."""
    out = []
    if recorded.get("git_commit") != current.get("git_commit"):
        out.append(f"code commit {current.get('git_commit')} differs from the recorded {recorded.get('git_commit')}")
    if recorded.get("git_dirty"):
        out.append("the recorded run had uncommitted changes (git_dirty): its exact code is not on record")
    for name, was in sorted((recorded.get("packages") or {}).items()):
        now = (current.get("packages") or {}).get(name)
        if was != now:
            out.append(f"package {name} {now} differs from the recorded {was}")
    if recorded.get("python") and recorded.get("python") != current.get("python"):
        out.append(f"Python {current.get('python')} differs from the recorded {recorded.get('python')}")
    return out


@dataclass
class FileComparison:
    relpath: str
    recorded: str | None
    reproduced: str | None
    status: str  # identical, differs, missing (not reproduced), extra (not on record)


@dataclass
class Comparison:
    artifact: str
    digest_recorded: str
    digest_reproduced: str | None
    files: list[FileComparison] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(f.status == "identical" for f in self.files) and self.digest_recorded == self.digest_reproduced

    @property
    def differing(self) -> list[str]:
        return [f.relpath for f in self.files if f.status != "identical"]

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "digest_recorded": self.digest_recorded,
                "digest_reproduced": self.digest_reproduced, "identical": self.identical,
                "differing": self.differing, "files": [asdict(f) for f in self.files]}


def compare(recorded: ArtifactRecord, directory: Path, digest: str | None) -> Comparison:
    """File by file: the recorded sha256 of each file against the reproduced file's."""
    directory = Path(directory)
    out = Comparison(recorded.label, recorded.digest, digest)
    on_record = {f.relpath: f.sha256 for f in recorded.files}
    made = {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    for rel in sorted(set(on_record) | set(made)):
        a, b = on_record.get(rel), made.get(rel)
        status = "identical" if a == b else "missing" if b is None else "extra" if a is None else "differs"
        out.files.append(FileComparison(rel, a, b, status))
    return out
