"""The lineage picture: runs and artifact versions as boxes, use/produce edges as arrows, as one self-contained SVG.

Graphviz's `dot` does the layout (layers, crossing minimisation, edge routing); this module only describes the
graph to it (`dot -Tplain`: node centres and edge splines) and draws the SVG itself, so that every caller (the run
report, `audit --report`, the impact report) gets the same boxes, colours and arrows. The SVG has a viewBox and
`width="100%"` with its natural width as `max-width`: it scales down in a narrow window and never grows blurry in a
wide one. Where `dot` is not installed, a simpler layered picture is drawn instead (`simple_layout`: one row per
layer, an edge that spans rows passing through a gap kept for it in each row between, so that no edge crosses a
box; edges may cross each other), with a visible note saying so, wrapped to the picture's width.

Pure: no Prefect, no wandb, no plotting library; `dot` is called with a timeout.
"""

from __future__ import annotations

import html
import shlex
import shutil
import subprocess
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from prefect_wandb.records import RunEdges

RED, BLUE, GREY = "#c01c28", "#1a5fb4", "#777777"
FILL = {"artifact": "#dbe8f7", "run": "#eeeeee", "bad": "#f8d0d0"}
DOT_TIMEOUT_S = 20
NO_DOT_NOTE = ("Graphviz 'dot' is not installed: a simpler layered picture (edges may cross each other, never a box); "
               "install graphviz for the full layout.")


@dataclass(frozen=True)
class Node:
    id: str
    kind: Literal["run", "artifact"]
    title: str  # bold first line: the job type, or the artifact label
    subtitle: str = ""  # second line: run id, or type and digest
    bad: bool = False  # failed verification / a failed run: drawn red
    highlight: bool = False  # the audited subject: a thick blue border


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]  # (source id, destination id): artifact -> run (used), run -> artifact
    # Layout-only constraints (a, b): b is drawn below a, no arrow (the report reads promote's decision).
    order: tuple[tuple[str, str], ...] = ()
    title: str = "Lineage"
    footer: str = ""  # a line under the picture (the audit's verdict)
    footer_color: str = "#555555"

    def __post_init__(self):
        ids = {n.id for n in self.nodes}
        if len(ids) != len(self.nodes):
            raise ValueError("lineage graph: duplicate node ids")
        for s, d in self.edges + self.order:
            if s not in ids or d not in ids:
                raise ValueError(f"lineage graph: edge {s} -> {d} names an unknown node")


# Box geometry, in SVG user units (= points for dot, which works in inches of 72 points).
H_BOX, PAD, FONT = 44, 16, 12


def _box_width(n: Node) -> float:
    # A generous average glyph width for 12 px sans-serif (bold is wider): no text overflows its box.
    return max(120.0, 7.6 * len(n.title) + 24, 6.8 * len(n.subtitle) + 24)


def dot_available() -> bool:
    return shutil.which("dot") is not None


def _dot_source(g: Graph) -> str:
    ids = {n.id: f"n{i}" for i, n in enumerate(g.nodes)}
    lines = ["digraph lineage {", "  rankdir=TB; nodesep=0.25; ranksep=0.35; splines=spline;",
             '  node [shape=box, fixedsize=true, label=""];', "  edge [arrowhead=none];"]
    for n in g.nodes:
        lines.append(f"  {ids[n.id]} [width={_box_width(n) / 72:.3f}, height={H_BOX / 72:.3f}];")
    for s, d in g.edges:
        lines.append(f"  {ids[s]} -> {ids[d]};")
    for s, d in g.order:
        lines.append(f"  {ids[s]} -> {ids[d]} [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_layout(g: Graph) -> tuple[float, float, dict[str, tuple[float, float]], list[list[tuple[float, float]]]]:
    """(width, height, node centres, edge control points in `g.edges` order) in SVG coordinates (y down)."""
    out = subprocess.run(["dot", "-Tplain"], input=_dot_source(g), capture_output=True, text=True,
                         timeout=DOT_TIMEOUT_S, check=True).stdout
    by_dot = {f"n{i}": n.id for i, n in enumerate(g.nodes)}
    width = height = 0.0
    centres: dict[str, tuple[float, float]] = {}
    routed: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line in out.splitlines():
        f = shlex.split(line)
        if not f:
            continue
        if f[0] == "graph":
            width, height = float(f[2]) * 72, float(f[3]) * 72
        elif f[0] == "node":
            centres[by_dot[f[1]]] = (float(f[2]) * 72, height - float(f[3]) * 72)
        elif f[0] == "edge" and f[-2] != "invis":
            k = int(f[3])
            pts = [float(v) * 72 for v in f[4 : 4 + 2 * k]]
            routed[(by_dot[f[1]], by_dot[f[2]])] = [(pts[i], height - pts[i + 1]) for i in range(0, len(pts), 2)]
    return width, height, centres, [routed[e] for e in g.edges]  # in the graph's edge order


def _layers(g: Graph) -> dict[str, int]:
    """Layer = longest path from a root over the edges and the order hints (cycles, which lineage never has, are
    cut)."""
    preds: dict[str, list[str]] = {n.id: [] for n in g.nodes}
    for s, d in g.edges + g.order:
        preds[d].append(s)
    rank: dict[str, int] = {}

    def r(n: str, stack: frozenset = frozenset()) -> int:
        if n not in rank:
            rank[n] = 0 if not preds[n] or n in stack else 1 + max(r(p, stack | {n}) for p in preds[n])
        return rank[n]

    return {n.id: r(n.id) for n in g.nodes}


CHANNEL, GAP, ROW_GAP = 12.0, 20.0, 36.0  # a passing edge's slot in a row; between boxes; between rows


def simple_layout(g: Graph):
    """The fallback without `dot`: one row per layer. An edge that spans rows gets a slot (`CHANNEL` wide) in each
    row it passes, so it runs between boxes, never through one; the order in each row is improved by a few
    barycentre sweeps (fewer crossings). Edges leave a box's bottom and enter the next row's top vertically."""
    layer = _layers(g)
    rows: dict[int, list[str]] = {}
    wide: dict[str, float] = {}
    for n in g.nodes:
        rows.setdefault(layer[n.id], []).append(n.id)
        wide[n.id] = _box_width(n)
    chains: list[list[str]] = []  # per edge: source, its slots in the rows between, destination
    for k, (s, d) in enumerate(g.edges):
        via = [f"\0{k}:{r}" for r in range(layer[s] + 1, layer[d])]
        for r, v in zip(range(layer[s] + 1, layer[d]), via, strict=True):
            rows[r].append(v)
            wide[v] = CHANNEL
        chains.append([s, *via, d])
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for chain in chains:
        for a, b in zip(chain, chain[1:], strict=False):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
    order = sorted(rows)

    def sweep(seq: list[int], near: dict[str, list[str]], ref_of) -> None:
        for r in seq:
            ref = ref_of(r)
            if ref not in rows:
                continue
            at = {v: i for i, v in enumerate(rows[ref])}
            now = {v: i for i, v in enumerate(rows[r])}

            def key(v: str, at=at, now=now) -> float:
                ns = [at[u] for u in near.get(v, ()) if u in at]
                return sum(ns) / len(ns) if ns else float(now[v])
            rows[r].sort(key=key)  # stable: ties keep their order

    for _ in range(4):
        sweep(order[1:], up, lambda r: r - 1)
        sweep(order[::-1][1:], down, lambda r: r + 1)
    dy = H_BOX + ROW_GAP
    widths = {r: sum(wide[v] for v in vs) + GAP * (len(vs) - 1) for r, vs in rows.items()}
    width = max(widths.values(), default=0)
    x_of: dict[str, float] = {}
    for r, vs in rows.items():
        x = (width - widths[r]) / 2
        for v in vs:
            x_of[v] = x + wide[v] / 2
            x += wide[v] + GAP
    centres = {n.id: (x_of[n.id], layer[n.id] * dy + H_BOX / 2) for n in g.nodes}
    height = (max(rows, default=0) + 1) * dy - ROW_GAP
    splines = []
    for (s, d), chain in zip(g.edges, chains, strict=True):
        # down the slots: a straight piece through each row passed, a curve with vertical ends in each gap
        stops = [(x_of[s], layer[s] * dy + H_BOX)]
        for r, v in zip(range(layer[s] + 1, layer[d]), chain[1:-1], strict=True):
            stops += [(x_of[v], r * dy), (x_of[v], r * dy + H_BOX)]
        stops.append((x_of[d], layer[d] * dy))
        pts = [stops[0]]
        for (x1, y1), (x2, y2) in zip(stops, stops[1:], strict=False):
            bend = (y2 - y1) / 2 if x1 != x2 else 0
            pts += [(x1, y1 + bend), (x2, y2 - bend), (x2, y2)]
        splines.append(pts)
    return width, height, centres, splines


def _lines(text: str, width: float) -> list[str]:
    """`text` wrapped to `width` units of 12 px sans-serif (a generous 7 units a character): shown whole."""
    return textwrap.wrap(text, max(20, int(width // 7))) if text else []


def render_svg(g: Graph, *, use_dot: bool | None = None) -> str:
    """The picture as a standalone SVG document (also fit to inline in HTML): no script, no network."""
    use_dot = dot_available() if use_dot is None else use_dot
    note = ""
    if use_dot:
        try:
            width, height, centres, splines = dot_layout(g)
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            width, height, centres, splines = simple_layout(g)
            note = (f"Graphviz 'dot' failed ({type(e).__name__}): a simpler layered picture (edges may cross each "
                    "other, never a box).")
    else:
        width, height, centres, splines = simple_layout(g)
        note = NO_DOT_NOTE
    inner = max(width, 360.0) if (note or g.footer) else width  # room for a readable line under a narrow graph
    notes, footers = _lines(note, inner), _lines(g.footer, inner)
    vw, vh = inner + 2 * PAD, height + 2 * PAD + 20 * (len(notes) + len(footers))
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {vw:.0f} {vh:.0f}" width="100%" '
           f'style="max-width:{vw:.0f}px;height:auto" font-family="sans-serif" font-size="{FONT}" '
           f'role="img" data-layout="{"dot" if not note else "simple"}">'),
           f"<title>{html.escape(g.title)}</title>",
           ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>'),
           f'<g transform="translate({PAD + (inner - width) / 2:.1f} {PAD})">']
    for pts in splines:
        (x0, y0), rest = pts[0], pts[1:]
        d = f"M {x0:.1f} {y0:.1f}" + "".join(
            f" C {rest[i][0]:.1f} {rest[i][1]:.1f}, {rest[i + 1][0]:.1f} {rest[i + 1][1]:.1f}, "
            f"{rest[i + 2][0]:.1f} {rest[i + 2][1]:.1f}" for i in range(0, len(rest) - 2, 3))
        out.append(f'<path d="{d}" fill="none" stroke="#555" marker-end="url(#arrow)"/>')
    for n in g.nodes:
        cx, cy = centres[n.id]
        w = _box_width(n)
        x, y = cx - w / 2, cy - H_BOX / 2
        fill = FILL["bad"] if n.bad else FILL[n.kind]
        stroke = RED if n.bad else (BLUE if n.highlight else GREY)
        sw = 3 if (n.bad or n.highlight) else 1
        rx = 4 if n.kind == "artifact" else 16
        out.append(f'<g class="{n.kind}"><rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{H_BOX}" rx="{rx}" '
                   f'fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
                   f'<text x="{cx:.1f}" y="{y + 18:.1f}" text-anchor="middle" font-weight="bold">'
                   f"{html.escape(n.title)}</text>"
                   f'<text x="{cx:.1f}" y="{y + 35:.1f}" text-anchor="middle">{html.escape(n.subtitle)}</text></g>')
    out.append("</g>")
    y = height + 2 * PAD + 14
    for line in notes:
        out.append(f'<text x="{PAD}" y="{y:.0f}" fill="#9c6500">{html.escape(line)}</text>')
        y += 20
    for line in footers:
        out.append(f'<text x="{PAD}" y="{y:.0f}" fill="{g.footer_color}" font-weight="bold">'
                   f"{html.escape(line)}</text>")
        y += 20
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- from lineage records

def _short(digest: str | None, n: int = 12) -> str:
    return (digest or "")[:n]


def lineage_graph(runs: Sequence, edges: Mapping[str, RunEdges], *, title: str = "Lineage",
                  pending: Mapping[str, Sequence[tuple[str, str]]] | None = None) -> Graph:
    """The picture of recorded runs (objects with run_id, job_type, status) and their use/produce edges
    (`edges[run_id]`: `LineageStore.edges`, artifact records with name, version, type, digest).

    `pending[run_id]` names outputs not recorded yet, as (label, subtitle): the report drawing its own stage. A
    failed run is drawn red. The report stage reads promote's decision, so it is laid out below promote (without
    that hint the two sit side by side and their input edges cross)."""
    nodes: dict[str, Node] = {}
    out_edges: list[tuple[str, str]] = []
    for run in runs:
        rid = f"run:{run.run_id}"
        nodes[rid] = Node(rid, "run", run.job_type, f"run {run.run_id}" + ("" if run.status != "failed" else
                                                                           " · failed"), bad=run.status == "failed")
        run_edges = edges.get(run.run_id) or RunEdges(used=[], produced=[])
        for direction, arts in (("used", run_edges.used), ("produced", run_edges.produced)):
            for a in arts:
                aid = f"artifact:{a.name}:v{a.version}"
                nodes.setdefault(aid, Node(aid, "artifact", f"{a.name}:v{a.version}", f"{a.type} · {_short(a.digest)}"))
                out_edges.append((aid, rid) if direction == "used" else (rid, aid))
        for label, sub in (pending or {}).get(run.run_id, ()):
            aid = f"artifact:{label}"
            nodes[aid] = Node(aid, "artifact", label, sub)
            out_edges.append((rid, aid))
    by_flow: dict[tuple, list[str]] = {}  # (flow run, job type) -> runs
    for run in runs:
        by_flow.setdefault((getattr(run, "flow_run_id", None), run.job_type), []).append(f"run:{run.run_id}")
    order = tuple((p, r) for (flow, job), reports in by_flow.items() if job == "report"
                  for p in by_flow.get((flow, "promote"), ()) for r in reports)
    return Graph(tuple(nodes.values()), tuple(dict.fromkeys(out_edges)), order=order, title=title)
