"""The forward walk: everything derived from an artifact, and which current aliases depend on it.

"This dataset turned out to be mislabelled: which production model depends on it?" `impact(store, ids)` follows
the lineage store's edges forward (the runs that used an artifact, what they produced, recursively) and gathers,
for every artifact reached, its current aliases and the promotion decisions about it. Pure: reads the store only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from prefect_wandb.records import optional
from prefect_wandb.store import ALIASES, ArtifactRecord, LineageStore


@dataclass(frozen=True)
class ImpactArtifact:
    """An artifact version reached: a subject or one derived from it, with the aliases it holds now."""

    label: str
    name: str
    type: str
    version: int
    digest: str
    path: str
    created_at: str
    role: Literal["subject", "derived"]
    aliases: list[str]


@dataclass(frozen=True)
class ImpactRun:
    """A run that used an artifact reached, and what it used and produced (labels)."""

    run_id: str
    job_type: str
    status: str
    started_at: str
    flow_run_id: str | None
    used: list[str]
    produced: list[str]


@dataclass(frozen=True)
class ImpactPromotion:
    """A decision about an artifact reached, or one that compared with a value read from one (`compared_with`)."""

    artifact: str
    decision: str
    reason: str
    decided_at: str
    promotion_id: int
    kind: str  # 'gate' or 'rollback'
    compared_with: str | None  # the artifact production's value was read from


@dataclass(frozen=True)
class AffectedAlias:
    """A current alias (`name:alias`) on an artifact reached."""

    alias: str
    artifact: str
    name: str


@dataclass
class RunNode:
    """A run in the tree, what it produced expanded where first met (`repeat` after)."""

    run_id: str
    job_type: str
    status: str
    produced: list[ArtifactNode] = field(default_factory=list)
    repeat: bool | None = optional()


@dataclass
class ArtifactNode:
    """An artifact in the tree: the runs that used it, its aliases and decisions; expanded once (`repeat` after)."""

    artifact: str
    artifact_id: int
    type: str
    digest: str
    derived: list[RunNode] = field(default_factory=list)
    repeat: bool | None = optional()
    aliases: list[str] = field(default_factory=list)
    promotions: list[ImpactPromotion] = field(default_factory=list)


@dataclass(kw_only=True)
class ImpactReport:
    """The forward closure; `as_json(report)` is the `impact --json` output (its keys in this order)."""

    schema: int = 1
    lineage_db: str
    subjects: list[str]
    artifacts: dict[str, ImpactArtifact]  # by label
    derived: dict[str, list[str]]  # type -> the derived versions' labels
    runs: dict[str, ImpactRun]  # by run id
    promotions: list[ImpactPromotion]
    aliases: list[AffectedAlias]
    production_affected: bool
    tree: list[ArtifactNode]
    edges: list[list[str]]  # ["artifact:<label>", "run:<id>"] pairs, in the direction of the data
    report: str | None = optional()  # the --report file written


def current_aliases(store: LineageStore, names: set[str]) -> dict[int, list[str]]:
    """artifact_id -> the aliases that point at it now, for the artifact names given."""
    out: dict[int, list[str]] = {}
    for name in sorted(names):
        for alias in ALIASES:
            rec = store.alias(name, alias)
            if rec is not None:
                out.setdefault(rec.artifact_id, []).append(alias)
    return out


def impact(store: LineageStore, subjects: list[ArtifactRecord]) -> ImpactReport:
    """The forward closure of `subjects` (`as_json` of it: the `impact --json` output).

    `tree` nests artifact -> runs that used it -> what they produced; an artifact reached twice (a validation uses
    the model, the ONNX and the dataset) is expanded once and referenced (`"repeat": true`) after."""
    seen: set[int] = set()
    arts: dict[int, ArtifactRecord] = {}
    runs: dict[str, ImpactRun] = {}
    edges: list[list[str]] = []

    def walk(rec: ArtifactRecord) -> ArtifactNode:
        node = ArtifactNode(rec.label, rec.artifact_id, rec.type, rec.digest,
                            repeat=True if rec.artifact_id in seen else None)
        if node.repeat:
            return node
        seen.add(rec.artifact_id)
        arts[rec.artifact_id] = rec
        for run_id in store.consumers(rec.artifact_id):
            run = store.run(run_id)
            if run is None:  # an edge to a run that is not on record: nothing to say about it
                continue
            io = store.edges(run_id)
            edges.append([f"artifact:{rec.label}", f"run:{run_id}"])
            run_node = RunNode(run_id, run.job_type, run.status)
            if run_id in runs:
                run_node.repeat = True
            else:
                runs[run_id] = ImpactRun(run_id, run.job_type, run.status, run.started_at, run.flow_run_id,
                                         [u.label for u in io.used], [p.label for p in io.produced])
                for p in io.produced:
                    edges.append([f"run:{run_id}", f"artifact:{p.label}"])
                    run_node.produced.append(walk(p))
            node.derived.append(run_node)
        return node

    tree = [walk(s) for s in subjects]
    aliases = current_aliases(store, {a.name for a in arts.values()})
    promotions = []
    # decisions about these, and those that compared a candidate with a value read from one of these (production's
    # metrics: the deciding run used it)
    for p in store.promotions():
        if p.artifact_id in arts or p.production_metrics_id in arts:
            about = arts.get(p.artifact_id) or store.artifact(p.artifact_id)
            source = None if p.production_metrics_id is None else (
                arts.get(p.production_metrics_id) or store.artifact(p.production_metrics_id))
            promotions.append(ImpactPromotion(about.label, p.decision, p.reason, p.decided_at, p.promotion_id,
                                              p.kind or "gate", source.label if source else None))

    def annotate(node: ArtifactNode) -> None:
        node.aliases = aliases.get(node.artifact_id, [])
        node.promotions = [] if node.repeat else [
            p for p in promotions if node.artifact in (p.artifact, p.compared_with)]
        for r in node.derived:
            for p in r.produced:
                annotate(p)

    for t in tree:
        annotate(t)
    subject_ids = {s.artifact_id for s in subjects}
    derived = [a for aid, a in sorted(arts.items()) if aid not in subject_ids]
    by_type: dict[str, list[str]] = {}
    for a in derived:
        by_type.setdefault(a.type, []).append(a.label)
    affected_aliases = [AffectedAlias(al, arts[aid].label, arts[aid].name)
                        for aid, als in sorted(aliases.items()) if aid in arts for al in als]
    return ImpactReport(
        lineage_db=str(store.path), subjects=[s.label for s in subjects],
        artifacts={a.label: ImpactArtifact(a.label, a.name, a.type, a.version, a.digest, a.path, a.created_at,
                                           "subject" if a.artifact_id in subject_ids else "derived",
                                           aliases.get(a.artifact_id, [])) for a in arts.values()},
        derived=by_type, runs=runs, promotions=promotions, aliases=affected_aliases,
        production_affected=any(a.alias == "production" for a in affected_aliases), tree=tree, edges=edges)


def render_tree(report: ImpactReport) -> str:
    """The text tree: subject -> run (job type) -> derived artifact [aliases], with promotion decisions."""
    out = [f"Impact of {', '.join(report.subjects)}", f"  lineage store {report.lineage_db}"]

    def art_line(node: ArtifactNode) -> str:
        tags = f" [{', '.join(node.aliases)}]" if node.aliases else ""
        more = " (see above)" if node.repeat else ""
        return f"{node.artifact} ({node.type}, {node.digest[:16]}){tags}{more}"

    def draw(node: ArtifactNode, prefix: str) -> None:
        # a run once, where first met
        children: list[ImpactPromotion | RunNode] = [*node.promotions, *(r for r in node.derived if not r.repeat)]
        for i, child in enumerate(children):
            last = i == len(children) - 1
            branch, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
            if isinstance(child, ImpactPromotion):
                about = f" about {child.artifact}, compared with this" if child.compared_with == \
                    node.artifact and child.artifact != node.artifact else ""
                out.append(f"{prefix}{branch}decision{about} {child.decision} at {child.decided_at}: {child.reason}")
                continue
            status = "" if child.status == "finished" else f" ({child.status})"
            out.append(f"{prefix}{branch}{child.job_type} run {child.run_id}{status}")
            for j, p in enumerate(child.produced):
                plast = j == len(child.produced) - 1
                out.append(f"{prefix}{cont}{'└─ ' if plast else '├─ '}{art_line(p)}")
                draw(p, prefix + cont + ("   " if plast else "│  "))

    for t in report.tree:
        out.append(art_line(t))
        draw(t, "")
    out.append("")
    if report.derived:
        out.append("Derived: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(report.derived.items())))
    else:
        out.append("Derived: nothing (no recorded run used it)")
    if report.aliases:
        out.append("Current aliases that depend on it: " + ", ".join(f"{a.name}:{a.alias} = {a.artifact}"
                                                                      for a in report.aliases))
    else:
        out.append("Current aliases that depend on it: none")
    if report.production_affected:
        out.append("PRODUCTION depends on it.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- the picture


def message(report: ImpactReport) -> str:
    n = sum(len(v) for v in report.derived.values())
    prod = [a for a in report.aliases if a.alias == "production"]
    tail = (f"; PRODUCTION depends on it: {', '.join(a.name + ':production = ' + a.artifact for a in prod)}"
            if prod else "; no production model depends on it")
    return f"{n} artifact version(s) derived from {', '.join(report.subjects)}{tail}"


def render_svg(report: ImpactReport) -> str:
    """The impact in the audit's picture style: artifacts (aliases in their label), runs, edges; what production
    depends on is drawn with the subject's bold outline."""
    from prefect_wandb import picture
    from prefect_wandb.audit.render import draw_lineage

    prod = [a.artifact for a in report.aliases if a.alias == "production"]
    arts = {lab: (lab + (f" [{', '.join(a.aliases)}]" if a.aliases else ""), a.type, a.digest, False)
            for lab, a in report.artifacts.items()}
    return picture.render_svg(draw_lineage(
        report.subjects + [p for p in prod if p not in report.subjects], arts,
        {rid: (r.job_type, r.flow_run_id) for rid, r in report.runs.items()}, report.edges,
        message(report), "impact"))


def render_html(report: ImpactReport) -> str:
    """One self-contained page (templates/impact.html.j2): the graph (the audit's picture style) and the tree."""
    from markupsafe import Markup

    from prefect_wandb import templating

    return templating.render(
        "prefect_wandb", "impact.html.j2", title=f"Impact of {', '.join(report.subjects)}",
        color="#c01c28" if report.production_affected else "#26a269", verdict=message(report),
        # Markup on purpose: picture.render_svg draws the SVG itself and escapes every text in it.
        graph=Markup(render_svg(report)), tree=render_tree(report))
