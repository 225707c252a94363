"""`sync --verify` and `audit --online`: does W&B hold what the lineage store recorded? Read-only.

For every artifact version of the store whose producing run recorded to W&B (online or offline, not disabled):
- W&B has it under its `sha256-<digest[:16]>` alias, with the same files (W&B's md5 of each file equals the md5
  of the stored file; W&B keeps md5s, the store sha256s, so the stored files are re-hashed). A stored file that no
  longer has its recorded sha256 is the local copy's difference (`local`), not W&B's: it is named, and W&B's copy
  of it is not judged;
- it was logged by a run the store records as producing it (its producer; or another run that made the very same
  content at the same moment, whose commit found the version already stored and which W&B may have heard first);
- every run the store records as using it is among W&B's `used_by` (the run's input is declared);
- the aliases the store holds (`candidate`, `production`) are on this version in W&B.

All W&B reads go through the `WandbBackend` (`lookup_artifact` only), so the same code runs against the real W&B
(`wandb.client.WandbClient`) and the in-memory `recording.RecordingWandb`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from prefect_wandb.artifact_files import readable_folder
from prefect_wandb.hashing import file_hashes
from prefect_wandb.records import WandbVersion
from prefect_wandb.refs import wandb_ref
from prefect_wandb.store import ALIASES, ArtifactRecord, LineageStore


def lookup_versions(backend, refs: dict[str, str]) -> dict[str, WandbVersion | None]:
    """What W&B holds for each `label -> [entity/]project/name:sha256-…` (None where it holds nothing): the one
    read of W&B that `sync --verify` and `audit --online` share. `backend.check()` first, so a W&B that cannot be
    used fails before any lookup; any other W&B error propagates, for the CLI to print as one line."""
    backend.check()
    return {label: backend.lookup_artifact(ref) for label, ref in refs.items()}


@dataclass(frozen=True)
class Difference:
    kind: str  # missing | content | producer | input | alias (W&B differs) | local (the stored file changed)
    artifact: str  # name:vN in the store
    ref: str  # the W&B path checked
    detail: str

    def line(self) -> str:
        return f"{self.kind:8} {self.artifact} ({self.ref}): {self.detail}"


def compare_artifact(art: ArtifactRecord, ref: str, info: WandbVersion | None, *, producers: Sequence[str],
                     consumers: list[str], aliases: list[str]) -> list[Difference]:
    """What differs between one stored artifact version and W&B's answer for `ref` (None: W&B has no such version).
    `producers`: the runs the store records as producing it, its producer first; `consumers`: the runs the store
    records as using it that recorded to W&B; `aliases`: the store's aliases (among candidate/production) on this
    version."""
    lab = art.label
    if info is None:
        return [Difference("missing", lab, ref, "W&B has no version under this alias (not uploaded: `sync`)")]
    out = []
    remote = info.files
    folder = readable_folder(art.path, art.files)  # a version in S3: this host's cache copy
    for f in art.files:
        local = folder / f.relpath
        if f.relpath not in remote:
            out.append(Difference("content", lab, ref, f"{f.relpath} is not in W&B's version"))
            continue
        if not local.is_file():
            continue  # deleted by gc or missing: `audit` says which; W&B's copy cannot be compared with nothing
        hashes = file_hashes(local, "sha256", "md5")
        sha256, md5 = hashes["sha256"].hexdigest(), base64.b64encode(hashes["md5"].digest()).decode()
        if sha256 != f.sha256:
            out.append(Difference("local", lab, ref, f"{local}: sha256 {sha256} does not match the recorded "
                                  f"{f.sha256}: the stored file changed since it was recorded, not W&B's copy"))
        elif remote[f.relpath] != md5:
            out.append(Difference("content", lab, ref, f"{f.relpath}: W&B's md5 {remote[f.relpath]} differs from "
                                  f"the stored file's {md5}"))
    for extra in sorted(set(remote) - {f.relpath for f in art.files}):
        out.append(Difference("content", lab, ref, f"W&B's version has a file the store does not: {extra}"))
    if producers and info.logged_by and info.logged_by not in producers:
        out.append(Difference("producer", lab, ref, f"logged by run {info.logged_by} in W&B, by "
                              f"{' or '.join(producers)} in the lineage store"))
    used_by = set(info.used_by)
    for run_id in consumers:
        if run_id not in used_by:
            out.append(Difference("input", lab, ref, f"run {run_id} used it, but W&B does not list it as an "
                                  "input of that run"))
    for alias in aliases:
        if alias not in info.aliases:
            out.append(Difference("alias", lab, ref, f"alias {alias!r} is on this version in the lineage store, "
                                  "not in W&B"))
    return out


def _in_wandb_scope(run) -> bool:
    return run is not None and run.wandb_mode in ("online", "offline") and bool(run.wandb_project)


@dataclass(frozen=True)
class WandbVerifyReport:
    """What `sync --verify` found: the W&B paths it compared and what differs (none: `ok`)."""

    checked: list[str]
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_json(self) -> dict:
        """`sync --verify --json`: each difference with its printed `line`."""
        return {"checked": self.checked, "differences": [asdict(d) | {"line": d.line()} for d in self.differences],
                "ok": self.ok}


def verify_wandb(store: LineageStore, backend, *, run_ids=None) -> WandbVerifyReport:
    """Compare the store with W&B, read-only. Raises what the backend raises (the caller makes it one line)."""
    runs = {r.run_id: r for r in store.runs()}
    todo = []
    for art in store.artifacts():
        producer = runs.get(art.producer_run_id)
        if producer is None or not _in_wandb_scope(producer) or (run_ids and art.producer_run_id not in run_ids):
            continue
        ref = wandb_ref(producer.wandb_entity, producer.wandb_project or "", art.name, art.digest)
        consumers = [r for r in store.consumers(art.artifact_id) if _in_wandb_scope(runs.get(r))
                     and runs[r].status == "finished"]
        aliases = [a for a in sorted(ALIASES) if (held := store.alias(art.name, a)) is not None
                   and held.artifact_id == art.artifact_id]
        todo.append((art, ref, consumers, aliases))
    found = lookup_versions(backend, {ref: ref for _, ref, _, _ in todo})
    checked, differences = [], []
    for art, ref, consumers, aliases in todo:
        checked.append(ref)
        producers = [art.producer_run_id, *(r for r in store.producers(art.artifact_id) if r != art.producer_run_id)]
        differences += compare_artifact(art, ref, found[ref], producers=producers, consumers=consumers,
                                        aliases=aliases)
    return WandbVerifyReport(checked, differences)


def verdict(result: WandbVerifyReport, command: str = "prefect-wandb") -> str:
    """One line: what differs and what to do. A stored file that changed (`local`) is named, as `audit` names it,
    and `sync` is not offered for it (it would not help: W&B holds what was recorded); `sync` is offered for what W&B
    itself lacks or holds otherwise."""
    if result.ok:
        return "OK: W&B holds what the lineage store recorded"
    local = [d for d in result.differences if d.kind == "local"]
    remote = [d for d in result.differences if d.kind != "local"]
    parts = []
    if local:
        first = local[0]
        more = f" (and {len(local) - 1} more)" if len(local) > 1 else ""
        parts.append(f"TAMPERED: {first.detail}{more}; `{command} audit {first.artifact}` names every "
                     "changed file")
    if remote:
        parts.append(f"W&B differs from the lineage store in {len(remote)} place(s); `{command} sync` sends what is "
                     "missing")
    return "; ".join(parts)


def render_verify(result: WandbVerifyReport, command: str = "prefect-wandb") -> str:
    out = [f"W&B verify: {len(result.checked)} artifact version(s) compared with the lineage store"]
    out += [f"  {d.line()}" for d in result.differences]
    n = len(result.differences)
    out.append(verdict(result, command) if result.ok else f"DIFFERENT: {n} difference(s): {verdict(result, command)}")
    return "\n".join(out) + "\n"
