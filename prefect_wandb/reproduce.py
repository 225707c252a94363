"""What `mnist-pipeline reproduce` re-runs, and how its files compare with the record (pure: no torch, no W&B).

`plan_reproduction(store, target)` walks back from a model, ONNX or metrics artifact to its dataset and lists the stages
that made it, each with the recorded run (its config, seed, thread count, code and package versions) and inputs.
`compare(recorded, directory)` is the file-by-file verdict. The stages themselves are re-run by
`mnist_pipeline.reproduce`, with the same functions the pipeline's tasks call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect_wandb.hashing import sha256_file
from prefect_wandb.store import ArtifactRecord, DeletionRecord, LineageStore

EXIT_IDENTICAL, EXIT_ERROR, EXIT_USAGE, EXIT_DIFFERS, EXIT_UNKNOWN, EXIT_INPUTS_GONE = 0, 1, 2, 3, 4, 5
REPRODUCIBLE = ("model", "onnx", "metrics")  # what re-running recorded stages can remake bit for bit
JOB_OF = {"model": "train", "onnx": "export-onnx", "metrics": "evaluate"}


class CannotReproduce(Exception):
    """The target is not something reproduce can remake (a dataset, a validation report with timings)."""


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
    steps: list[Step]  # in execution order: train first
    dataset: ArtifactRecord

    @property
    def train(self) -> Step:
        return self.steps[0]


def _step(store: LineageStore, rec: ArtifactRecord) -> Step:
    run_id = rec.producer_run_id
    run = store.run(run_id)
    if run is None:
        raise CannotReproduce(f"{rec.label}: its producing run {run_id} is not in the lineage store")
    used = {u.type: u for u in store.edges(run_id)["used"]}
    return Step(run.job_type, run_id, rec, used, run.config or {}, run.env or {},
                run.summary or {})


def plan_reproduction(store: LineageStore, target: ArtifactRecord) -> ReproductionPlan:
    """The recorded stages from the dataset to `target`: train, then export-onnx or evaluate."""
    if target.type not in REPRODUCIBLE:
        raise CannotReproduce(f"{target.label} is a {target.type}: reproduce remakes models, ONNX exports and "
                              f"metrics ({', '.join(REPRODUCIBLE)}); a dataset is re-made by prepare-data from raw "
                              "files, and a validation report holds timings that never repeat")
    last = _step(store, target)
    if last.job_type != JOB_OF[target.type]:
        raise CannotReproduce(f"{target.label} was made by a {last.job_type} run, not {JOB_OF[target.type]}")
    if target.type == "model":
        steps = [last]
    else:
        model = last.inputs.get("model")
        if model is None:
            raise CannotReproduce(f"{target.label}: its {last.job_type} run {last.run_id} recorded no model input")
        steps = [_step(store, model), last]
    if steps[0].job_type != "train" or "dataset" not in steps[0].inputs:
        raise CannotReproduce(f"{steps[0].output.label}: its training run {steps[0].run_id} recorded no dataset")
    return ReproductionPlan(target, steps, steps[0].inputs["dataset"])


def missing_inputs(plan: ReproductionPlan, deleted: dict[int, DeletionRecord] | None = None) -> list[str]:
    """The recorded inputs that are gone (deleted by gc, or missing/changed on disk), one line each."""
    deleted = deleted or {}
    out = []
    needed = {plan.dataset.artifact_id: plan.dataset}
    for s in plan.steps[1:]:
        for t, r in s.inputs.items():
            if t == "dataset":
                needed[r.artifact_id] = r
    for aid, rec in needed.items():
        if aid in deleted:
            d = deleted[aid]
            out.append(f"{rec.label}: deleted by gc on {d.deleted_at[:10]} by {d.deleted_by} ({rec.path})")
            continue
        for f in rec.files:
            p = Path(rec.path) / f.relpath
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
