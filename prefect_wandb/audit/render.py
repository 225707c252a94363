"""Renderers of an audit (`audit.audit`'s report): the text tree (the default), Mermaid/Markdown, a self-contained
HTML page with an SVG graph, and the SVG graph alone (`draw_lineage`, which the impact report's picture uses too).
They read the report and nothing else: no store, no files.
"""

from __future__ import annotations

import html
from pathlib import Path

from markupsafe import Markup

from prefect_wandb import picture, templating
from prefect_wandb.audit import FAILED, ArtifactEntry, AuditError, AuditReport, RunEntry, SignatureEntry
from prefect_wandb.audit.entries import TreeArtifact, TreeRun
from prefect_wandb.picture import Graph, Node


def _short(d: str | None, n: int = 16) -> str:
    return (d or "?")[:n]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _run_title(run: RunEntry) -> str:
    when = run.finished_at or run.started_at or ""
    return f"{run.job_type} run {run.run_id} ({run.status} {when})"


def _run_details(run: RunEntry) -> list[str]:
    out = []
    wb = run.wandb
    if wb.url:
        out.append(f"W&B run {wb.run_id}: {wb.url}")
    else:
        synced = f", synced {wb.synced_at}" if wb.synced_at else ", not synced yet"
        out.append(f"W&B run {wb.run_id} ({wb.mode}{synced}): {wb.dir}")
    out.append(f"Prefect flow run {run.flow_run_id or '-'}")
    code = run.code
    dirty = {True: "dirty: uncommitted changes", False: "clean", None: "unknown"}[code.git_dirty]
    out.append(f"code git {code.git_commit or '(not a git checkout)'} ({dirty}); python {run.python}; "
               f"seed {run.seed}")
    pk = run.packages
    if pk:
        out.append("packages " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items()) if v))
    section = run.config_section
    if section and isinstance(run.config.get(section), dict):
        out.append(f"config {section}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in run.config[section].items()))
    if run.error:
        out.append(f"error: {run.error}")
    return out


def _artifact_title(art: ArtifactEntry) -> str:
    bad = [f.relpath for f in art.files if f.status in FAILED]
    state = f"TAMPERED: {', '.join(bad)}" if bad else ("TAMPERED" if art.status == "tampered" else
                                                       f"deleted by gc on {art.deleted.deleted_at[:10]}"
                                                       if art.deleted else f"{len(art.files)} file(s) ok")
    return f"{art.label} ({art.type}) sha256 {_short(art.digest)}  [{state}]"


def _artifact_details(art: ArtifactEntry, report: AuditReport) -> list[str]:
    out = []
    s = art.summary
    if art.type == "dataset":
        m = art.metadata
        # the facts a dataset records about itself, those it has (where it came from, how it was cut, its sizes)
        facts = [f"source {m['source']}" + (f" ({m['source_location']})" if m.get("source_location") else "")
                 if m.get("source") is not None else "", f"slice {m['slice']}" if m.get("slice") is not None else "",
                 f"sizes {_fmt(m['sizes'])}" if m.get("sizes") is not None else ""]
        if any(facts):
            out.append("; ".join(f for f in facts if f))
        for split, counts in (m.get("class_counts") or {}).items():
            out.append(f"class counts {split} {_fmt(counts)}")
        for r in art.raw_files:
            out.append(f"raw {r['name']} sha256 {_short(r['sha256'])} {r['size']} B  {r['status']}")
    elif s:
        out.append(", ".join(f"{k} {_fmt(v)}" for k, v in s.items()))
    for f in art.files:
        extra = f" (now {_short(f.actual)})" if f.status == "mismatch" else \
            f" by gc on {art.deleted.deleted_at[:10]}" if f.status == "deleted" and art.deleted else ""
        out.append(f"file {f.relpath} sha256 {_short(f.sha256)} {f.size} B  {f.status}{extra}")
    shown = {str(Path(art.path) / f.relpath) for f in art.files}
    for c in report.checks:
        if c.artifact == art.label and c.status in FAILED and not (c.kind == "artifact-file" and c.path in shown):
            out.append(f"{c.status.upper()}: {c.path}: {c.detail}")
    for e in report.signatures:
        if e.artifact == art.label:
            out.append(_signature_line(e))
    if art.aliases:
        out.append("aliases " + ", ".join(f"{a.alias} (since {a.set_at})" for a in art.aliases))
    out.append(f"path {art.path}")
    return out


SIGNATURE_WORDS = {"verified": "signature verified", "mismatch": "SIGNATURE NOT VERIFIED", "missing": "SIGNATURE "
                   "NOT CHECKED (files missing)", "deleted": "signature not checked (deleted by gc)",
                   "unsigned": "unsigned"}


def _signature_line(e: SignatureEntry) -> str:
    """One line under the attested artifact; the checks are listed under Signatures."""
    if e.status == "unsigned":
        return "unsigned (no attestation on record)"
    key = {"given": "the given key", "signer": "the attestation's own signer.pub, not a trusted key"}.get(
        e.key or "", "")
    by = f"key {_short(e.key_fingerprint)}: {key}; " if key and e.key_fingerprint else ""
    failed = f": {', '.join(e.failed)} failed" if e.failed else ""
    return f"{SIGNATURE_WORDS[e.status]}{failed} ({e.relpath}; {by}attestation {e.attestation})"


def _signatures(report: AuditReport) -> list[str]:
    out = ["", "Signatures"]
    for e in report.signatures:
        if e.status == "unsigned":
            out.append(f"  {e.artifact}: unsigned (no attestation on record; not a failure)")
            continue
        out.append(f"  {e.artifact}/{e.relpath}: {SIGNATURE_WORDS[e.status]}")
        out.append(f"    file {e.path}")
        out.append(f"    attestation {e.attestation} (sign run {e.sign_run}): {e.attestation_path}")
        if e.status == "verified" or not e.checks:
            out.append(f"    {e.detail}")
        for c in e.checks:
            out.append(f"    {'ok    ' if c.ok else 'FAILED'} {c.name}: {c.detail}")
    return out


def _tree_node(node: TreeArtifact | TreeRun, report: AuditReport,
               prefix_title: str = "") -> tuple[str, list[str], list]:
    if isinstance(node, TreeArtifact):
        art = report.artifacts[node.artifact]
        if node.repeat:
            return f"{prefix_title}{art.label} (see above)", [], []
        children = [_tree_node(r, report, "produced by ") for r in node.produced_by]
        return prefix_title + _artifact_title(art), _artifact_details(art, report), children
    run = report.runs[node.run]
    if node.repeat:
        return f"{prefix_title}{run.job_type} run {run.run_id} (see above)", [], []
    children = [_tree_node(a, report, "used ") for a in node.used]
    return prefix_title + _run_title(run), _run_details(run), children


def _draw(node: tuple, prefix: str, last: bool, root: bool, out: list[str]) -> None:
    title, details, children = node
    out.append(prefix + ("" if root else ("└─ " if last else "├─ ")) + title)
    inner = prefix + ("" if root else ("   " if last else "│  "))
    for d in details:
        out.append(inner + ("│  " if children else "   ") + d)
    for i, c in enumerate(children):
        _draw(c, inner, i == len(children) - 1, False, out)


def render_tree(report: AuditReport) -> str:
    out = [f"Audit of {report.query_path or report.query}"]
    if report.query_sha256:
        out.append(f"  sha256 {report.query_sha256}")
    out.append(f"  lineage store {report.lineage_db}")
    if report.status == "unknown":
        out += ["", f"UNKNOWN: {report.message}"]
        for n in report.near_misses or []:
            same = "same name and size" if n.same_size else "same name"
            out.append(f"  ({same} as {n.artifact}/{n.relpath}, recorded sha256 {_short(n.sha256)}: "
                       "this file differs from it)")
        return "\n".join(out) + "\n"
    out.append(f"  identified as {', '.join(report.subjects)} (by {report.identified_by})")
    out += ["", "Lineage (back to the data)"]
    for node in report.upstream:
        _draw(_tree_node(node, report), "", True, True, out)
    out += ["", "Forward (what was measured and decided about it)"]
    if not report.downstream:
        out.append("  (no recorded run used it)")
    for d in report.downstream:
        run = report.runs[d.run]
        produced = ", ".join(d.produced) or "no artifact"
        out.append(f"  {_run_title(run)}: used {', '.join(d.used)} -> {produced}")
        for lab in d.produced:
            art = report.artifacts[lab]
            out.append(f"    {_artifact_title(art)}")
            out += [f"      {line}" for line in _artifact_details(art, report)]
        if run.error:
            out.append(f"    error: {run.error}")
    out += ["", "Promotions"]
    if not report.promotions:
        out.append("  (no promotion decision recorded)")
    for p in report.promotions:
        applied = f"applied in W&B {p.wandb_applied_at}" if p.wandb_applied_at else "not in W&B yet"
        label = "ROLLBACK" if p.kind == "rollback" else p.decision.upper()
        compared = f"; compared with {p.compared_with}" if p.compared_with else ""
        out.append(f"  {p.decided_at} {p.artifact} {label} ({p.role}): {p.reason}{compared}; "
                   f"validation {'passed' if p.validation_passed else 'failed'}; {applied}")
    if report.wandb_online is not None:
        out += ["", "W&B (online)"]
        for lab, e in report.wandb_online.items():
            if not e["found"]:
                out.append(f"  {lab}: {e['note']}")
            else:
                miss = f"; input edges missing in W&B: {', '.join(e['missing_input_edges'])}" \
                    if e.get("missing_input_edges") else ""
                out.append(f"  {lab}: {e['ref']} = W&B {e['version']} logged by {e['logged_by']}, used by "
                           f"{', '.join(e['used_by'] or []) or 'no run'}{miss}")
    if report.signatures:
        out += _signatures(report)
    counts: dict[str, dict[str, int]] = {}
    for c in report.checks:
        counts.setdefault(c.kind, {}).setdefault(c.status, 0)
        counts[c.kind][c.status] += 1
    out += ["", "Verification"]
    for kind, st in counts.items():
        out.append(f"  {kind}: " + ", ".join(f"{n} {s}" for s, n in sorted(st.items())))
    for c in report.failures:
        out.append(f"  {c.status.upper()} {c.path}: {c.detail}")
    out += ["", report.message]
    return "\n".join(out) + "\n"


def _node_ids(report: AuditReport) -> dict[str, str]:
    ids = {}
    for i, lab in enumerate(report.artifacts):
        ids[f"artifact:{lab}"] = f"a{i}"
    for i, run_id in enumerate(report.runs):
        ids[f"run:{run_id}"] = f"r{i}"
    return ids


def _node_text(report: AuditReport, key: str) -> tuple[str, str]:
    kind, _, name = key.partition(":")
    if kind == "artifact":
        a = report.artifacts[name]
        return a.label, f"{a.type} · {_short(a.digest, 12)}"
    r = report.runs[name]
    return r.job_type or "?", f"run {r.run_id}"


def _failed(a: ArtifactEntry) -> bool:
    """Drawn red: its files or record do not verify, or its signature does not."""
    return a.status == "tampered" or a.signature == "mismatch"


def render_mermaid(report: AuditReport) -> str:
    """A Mermaid flowchart of the lineage: artifact versions as slanted boxes, runs as rounded ones; the audited
    artifact in bold, anything that failed verification in red."""
    ids = _node_ids(report)
    lines = ["flowchart LR"]
    for key, nid in ids.items():
        top, sub = (html.escape(t, quote=True) for t in _node_text(report, key))
        text = f"{top}<br/>{sub}"
        lines.append(f'    {nid}[/"{text}"/]' if key.startswith("artifact:") else f'    {nid}("{text}")')
    for src, dst in report.edges:
        lines.append(f"    {ids[src]} --> {ids[dst]}")
    lines += ["    classDef subject stroke-width:4px,stroke:#1a5fb4",
              "    classDef tampered fill:#f8d0d0,stroke:#c01c28,stroke-width:3px",
              "    classDef run fill:#eeeeee,stroke:#777777"]
    runs = [ids[f"run:{r}"] for r in report.runs]
    if runs:
        lines.append(f"    class {','.join(runs)} run")
    subj = [ids[f"artifact:{s}"] for s in report.subjects]
    if subj:
        lines.append(f"    class {','.join(subj)} subject")
    bad = [ids[f"artifact:{lab}"] for lab, a in report.artifacts.items() if _failed(a)]
    if bad:
        lines.append(f"    class {','.join(bad)} tampered")
    return "\n".join(lines) + "\n"


def lineage_picture(report: AuditReport) -> Graph:
    """The audit's graph for the shared lineage picture (`prefect_wandb.picture`, laid out by Graphviz):
    the audited artifact with a thick blue border, anything that failed verification red, the verdict under it."""
    return draw_lineage(report.subjects, {lab: (a.label, a.type, a.digest, _failed(a))
                                          for lab, a in report.artifacts.items()},
                        {rid: (r.job_type, r.flow_run_id) for rid, r in report.runs.items()}, report.edges,
                        report.message, report.status)


def draw_lineage(subjects: list[str], artifacts: dict[str, tuple[str, str, str, bool]],
                 runs: dict[str, tuple[str | None, str | None]], edges: list[list[str]], message: str,
                 status: str) -> Graph:
    """The lineage picture of an audit or an impact report: artifacts by label -> (title, type, digest, drawn red),
    runs by id -> (job type, flow run id), `edges` between `artifact:<label>` and `run:<id>`; the `subjects` with a
    thick blue border, `message` under it in the colour of `status`."""
    nodes = [Node(f"artifact:{lab}", "artifact", title, f"{type_} · {_short(digest, 12)}", bad=bad,
                  highlight=lab in subjects) for lab, (title, type_, digest, bad) in artifacts.items()]
    nodes += [Node(f"run:{rid}", "run", job or "?", f"run {rid}") for rid, (job, _) in runs.items()]
    by_flow: dict[tuple, list[str]] = {}  # the report stage reads promote's decision: laid out below it
    for rid, (job, flow) in runs.items():
        by_flow.setdefault((flow, job), []).append(f"run:{rid}")
    order = tuple((p, q) for (flow, job), reports in by_flow.items() if job == "report"
                  for p in by_flow.get((flow, "promote"), ()) for q in reports)
    return Graph(tuple(nodes), tuple((s, d) for s, d in edges), order=order,
                 title=f"Lineage of {', '.join(subjects)}", footer=message,
                 footer_color={"verified": "#26a269", "tampered": "#c01c28"}.get(status, "#555555"))


def render_svg(report: AuditReport) -> str:
    """The lineage graph as a self-contained SVG (no script, no network), scaling to the window: open it in any
    browser. The same picture as the run report's."""
    return picture.render_svg(lineage_picture(report))


def _check_rows(report: AuditReport) -> list[tuple]:
    return [(c.status, c.kind, c.artifact or "", c.path, c.detail) for c in report.checks]


def _signature_rows(report: AuditReport) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for e in report.signatures:
        key = {"given": f"given {_short(e.key_fingerprint)}",
               "signer": f"its own signer.pub {_short(e.key_fingerprint)} (not a trusted key)"}.get(e.key or "", "-")
        failed = "; ".join(f"{c.name}: {c.detail}" for c in e.checks if not c.ok)
        rows.append((f"{e.artifact}/{e.relpath or ''}".rstrip("/"), SIGNATURE_WORDS[e.status], key,
                     e.attestation or "-", failed or ("" if e.status in ("verified", "unsigned") else e.detail)))
    return rows


def render_markdown(report: AuditReport) -> str:
    out = [f"# Provenance audit: {', '.join(report.subjects) or report.query}", "",
           f"**{report.message}** (exit {report.exit_code})", ""]
    if report.status != "unknown":
        out += ["## Lineage graph", "", "```mermaid", render_mermaid(report).rstrip(), "```", ""]
    out += ["## Audit", "", "```text", render_tree(report).rstrip(), "```", ""]
    if report.signatures:
        out += ["## Signatures", "", "| file | signature | key | attestation | failed checks |", "|---|---|---|---|---|"]
        out += [f"| {f} | {st} | {k} | {a} | {d.replace('|', '/')} |" for f, st, k, a, d in _signature_rows(report)]
        out.append("")
    if report.checks:
        out += ["## Digests re-checked", "", "| status | kind | artifact | file | detail |", "|---|---|---|---|---|"]
        out += [f"| {s} | {k} | {a} | `{p}` | {d.replace('|', '/')} |" for s, k, a, p, d in _check_rows(report)]
    return "\n".join(out) + "\n"


def render_html(report: AuditReport) -> str:
    """One self-contained HTML page (templates/audit.html.j2): the SVG graph, the tree and the table of re-checked
    digests."""
    known = report.status != "unknown"
    return templating.render(
        "prefect_wandb", "audit.html.j2",
        title=f"Provenance audit: {', '.join(report.subjects) or report.query}",
        color={"verified": "#26a269", "tampered": "#c01c28"}.get(report.status, "#555"),
        verdict=f"{report.message} (exit {report.exit_code})",
        # Markup on purpose: picture.render_svg draws the SVG itself and escapes every text in it.
        graph=Markup(render_svg(report)) if known else None, mermaid=render_mermaid(report) if known else None,
        signatures=_signature_rows(report), tree=render_tree(report), checks=_check_rows(report))


def write_report(report: AuditReport, path: Path) -> Path:
    """`.md` (Mermaid + tree), `.html` (SVG + tree, self-contained) or `.svg` (the graph alone)."""
    path = Path(path)
    renderers = {".md": render_markdown, ".markdown": render_markdown, ".html": render_html, ".htm": render_html,
                 ".svg": render_svg}
    if path.suffix.lower() not in renderers:
        raise AuditError(f"{path}: report must end in .md, .html or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(renderers[path.suffix.lower()](report), encoding="utf-8")
    return path
