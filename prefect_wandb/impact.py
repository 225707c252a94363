"""The forward walk: everything derived from an artifact, and which current aliases depend on it.

"This dataset turned out to be mislabelled: which production model depends on it?" `impact(store, ids)` follows
the lineage store's edges forward (the runs that used an artifact, what they produced, recursively) and gathers,
for every artifact reached, its current aliases and the promotion decisions about it. Pure: reads the store only.
"""

from __future__ import annotations

from typing import Any

from prefect_wandb.store import ALIASES, ArtifactRecord, LineageStore

EXIT_OK, EXIT_USAGE, EXIT_UNKNOWN = 0, 2, 4


def current_aliases(store: LineageStore, names: set[str]) -> dict[int, list[str]]:
    """artifact_id -> the aliases that point at it now, for the artifact names given."""
    out: dict[int, list[str]] = {}
    for name in sorted(names):
        for alias in ALIASES:
            rec = store.alias(name, alias)
            if rec is not None:
                out.setdefault(rec.artifact_id, []).append(alias)
    return out


def impact(store: LineageStore, subjects: list[ArtifactRecord]) -> dict:
    """The forward closure of `subjects` as one JSON-ready dict (the `impact --json` output).

    `tree` nests artifact -> runs that used it -> what they produced; an artifact reached twice (a validation uses
    the model, the ONNX and the dataset) is expanded once and referenced (`"repeat": true`) after."""
    seen: set[int] = set()
    arts: dict[int, ArtifactRecord] = {}
    runs: dict[str, dict] = {}
    edges: list[list[str]] = []

    def walk(rec: ArtifactRecord, depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"artifact": rec.label, "artifact_id": rec.artifact_id, "type": rec.type, "digest": rec.digest,
                "derived": []}
        if rec.artifact_id in seen:
            node["repeat"] = True
            return node
        seen.add(rec.artifact_id)
        arts[rec.artifact_id] = rec
        for run_id in store.consumers(rec.artifact_id):
            run = store.run(run_id)
            if run is None:  # an edge to a run that is not on record: nothing to say about it
                continue
            produced = store.edges(run_id)["produced"]
            edges.append([f"artifact:{rec.label}", f"run:{run_id}"])
            first = run_id not in runs
            runs.setdefault(run_id, {"run_id": run_id, "job_type": run.job_type,
                                     "status": run.status, "started_at": run.started_at,
                                     "flow_run_id": run.flow_run_id,
                                     "used": [u.label for u in store.edges(run_id)["used"]],
                                     "produced": [p.label for p in produced]})
            run_node: dict[str, Any] = {"run_id": run_id, "job_type": run.job_type, "status": run.status,
                        "produced": []}
            if first:
                for p in produced:
                    edges.append([f"run:{run_id}", f"artifact:{p.label}"])
                    run_node["produced"].append(walk(p, depth + 1))
            else:
                run_node["repeat"] = True
            node["derived"].append(run_node)
        return node

    tree = [walk(s, 0) for s in subjects]
    aliases = current_aliases(store, {a.name for a in arts.values()})
    promotions = []
    # decisions about these, and those that compared a candidate with a value read from one of these (production's
    # metrics: the deciding run used it)
    for p in store.promotions():
        if p.artifact_id in arts or p.production_metrics_id in arts:
            about = arts.get(p.artifact_id) or store.artifact(p.artifact_id)
            source = None if p.production_metrics_id is None else (
                arts.get(p.production_metrics_id) or store.artifact(p.production_metrics_id))
            promotions.append({"artifact": about.label, "decision": p.decision, "reason": p.reason,
                               "decided_at": p.decided_at, "promotion_id": p.promotion_id,
                               "kind": p.kind or "gate", "compared_with": source.label if source else None})

    def annotate(node: dict) -> None:
        node["aliases"] = aliases.get(node["artifact_id"], [])
        node["promotions"] = [p for p in promotions if node["artifact"] in (p["artifact"], p["compared_with"])] \
            if not node.get("repeat") else []
        for r in node["derived"]:
            for p in r["produced"]:
                annotate(p)

    for t in tree:
        annotate(t)
    subject_ids = {s.artifact_id for s in subjects}
    derived = [a for aid, a in sorted(arts.items()) if aid not in subject_ids]
    by_type: dict[str, list[str]] = {}
    for a in derived:
        by_type.setdefault(a.type, []).append(a.label)
    affected_aliases = [{"alias": al, "artifact": arts[aid].label, "name": arts[aid].name}
                        for aid, als in sorted(aliases.items()) if aid in arts for al in als]
    return {
        "schema": 1, "lineage_db": str(store.path), "subjects": [s.label for s in subjects],
        "artifacts": {a.label: {"label": a.label, "name": a.name, "type": a.type, "version": a.version,
                                 "digest": a.digest, "path": a.path, "created_at": a.created_at,
                                 "role": "subject" if a.artifact_id in subject_ids else "derived",
                                 "aliases": aliases.get(a.artifact_id, [])} for a in arts.values()},
        "derived": by_type, "runs": runs, "promotions": promotions, "aliases": affected_aliases,
        "production_affected": any(a["alias"] == "production" for a in affected_aliases),
        "tree": tree, "edges": edges,
    }


def render_tree(report: dict) -> str:
    """The text tree: subject -> run (job type) -> derived artifact [aliases], with promotion decisions."""
    out = [f"Impact of {', '.join(report['subjects'])}", f"  lineage store {report['lineage_db']}"]

    def art_line(node: dict) -> str:
        tags = f" [{', '.join(node['aliases'])}]" if node.get("aliases") else ""
        more = " (see above)" if node.get("repeat") else ""
        return f"{node['artifact']} ({node['type']}, {node['digest'][:16]}){tags}{more}"

    def draw(node: dict, prefix: str) -> None:
        children: list[tuple[str, Any]] = [("promotion", p) for p in node.get("promotions", [])]
        children += [("run", r) for r in node["derived"] if not r.get("repeat")]  # a run once, where first met
        for i, (kind, child) in enumerate(children):
            last = i == len(children) - 1
            branch, cont = ("└─ ", "   ") if last else ("├─ ", "│  ")
            if kind == "promotion":
                about = f" about {child['artifact']}, compared with this" if child["compared_with"] == \
                    node["artifact"] and child["artifact"] != node["artifact"] else ""
                out.append(f"{prefix}{branch}decision{about} {child['decision']} at {child['decided_at']}: "
                           f"{child['reason']}")
                continue
            status = "" if child["status"] == "finished" else f" ({child['status']})"
            tail = " (see above)" if child.get("repeat") else ""
            out.append(f"{prefix}{branch}{child['job_type']} run {child['run_id']}{status}{tail}")
            for j, p in enumerate(child["produced"]):
                plast = j == len(child["produced"]) - 1
                out.append(f"{prefix}{cont}{'└─ ' if plast else '├─ '}{art_line(p)}")
                draw(p, prefix + cont + ("   " if plast else "│  "))

    for t in report["tree"]:
        out.append(art_line(t))
        draw(t, "")
    out.append("")
    if report["derived"]:
        out.append("Derived: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(report["derived"].items())))
    else:
        out.append("Derived: nothing (no recorded run used it)")
    if report["aliases"]:
        out.append("Current aliases that depend on it: " + ", ".join(f"{a['name']}:{a['alias']} = {a['artifact']}"
                                                                      for a in report["aliases"]))
    else:
        out.append("Current aliases that depend on it: none")
    if report["production_affected"]:
        out.append("PRODUCTION depends on it.")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- the picture


def message(report: dict) -> str:
    n = sum(len(v) for v in report["derived"].values())
    prod = [a for a in report["aliases"] if a["alias"] == "production"]
    tail = (f"; PRODUCTION depends on it: {', '.join(a['name'] + ':production = ' + a['artifact'] for a in prod)}"
            if prod else "; no production model depends on it")
    return f"{n} artifact version(s) derived from {', '.join(report['subjects'])}{tail}"


def render_svg(report: dict) -> str:
    """The impact in the audit's picture style: artifacts (aliases in their label), runs, edges; what production
    depends on is drawn with the subject's bold outline."""
    from prefect_wandb import picture
    from prefect_wandb.audit.render import draw_lineage

    prod = [a["artifact"] for a in report["aliases"] if a["alias"] == "production"]
    arts = {lab: (lab + (f" [{', '.join(a['aliases'])}]" if a["aliases"] else ""), a["type"], a["digest"], False)
            for lab, a in report["artifacts"].items()}
    return picture.render_svg(draw_lineage(
        report["subjects"] + [p for p in prod if p not in report["subjects"]], arts,
        {rid: (r["job_type"], r["flow_run_id"]) for rid, r in report["runs"].items()}, report["edges"],
        message(report), "impact"))


def render_html(report: dict) -> str:
    """One self-contained page (templates/impact.html.j2): the graph (the audit's picture style) and the tree."""
    from markupsafe import Markup

    from prefect_wandb import templating

    return templating.render(
        "prefect_wandb", "impact.html.j2", title=f"Impact of {', '.join(report['subjects'])}",
        color="#c01c28" if report["production_affected"] else "#26a269", verdict=message(report),
        # Markup on purpose: picture.render_svg draws the SVG itself and escapes every text in it.
        graph=Markup(render_svg(report)), tree=render_tree(report))
