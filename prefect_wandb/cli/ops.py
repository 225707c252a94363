"""`reproduce` and `impact`: re-run what made an artifact and compare it bit for bit; everything derived from one.

No Prefect import; reproduce imports what the program's rebuild functions import (a pipeline's own ML code).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from prefect_wandb import impact as impact_mod
from prefect_wandb import reproduce as R
from prefect_wandb.cli.args import Parents, add_command, err, identify_target, open_store, program
from prefect_wandb.exit_codes import Exit
from prefect_wandb.records import as_json

REPRODUCE_EPILOG = """\
verdicts: 0 IDENTICAL (every file of every re-made artifact has its recorded sha256), 3 DIFFERS (the files are
named), 4 unknown or the recorded inputs are gone (deleted by gc, missing, or changed: nothing was re-run), 1 the
re-run failed (the message names the step).

Bit-identity holds on CPU with the same torch and onnx versions, the recorded intra-op thread count (used by
default), the same dataset artifact, config and seed, and the same CPU instruction-set family.
"""

def add_parsers(sub, parents: Parents) -> None:
    common = [parents.store, parents.json]
    r = add_command(sub, "reproduce", parents=common, epilog=REPRODUCE_EPILOG,
                    help="re-run the recorded stages that made an artifact in a scratch folder and compare every "
                    "file's digest (exit 0 identical, 3 differs, 4 unknown or inputs gone)",
                    description="Re-run training (and export or evaluation) from the recorded dataset artifact, "
                    "config, seed and thread count, in a scratch folder, and compare the files bit for bit.")
    r.add_argument("target", help="a model, ONNX or metrics file or folder, or a reference (NAME:production, "
                   "NAME:v3)")
    r.add_argument("--workdir", help="where to re-run (kept); default: a temporary folder, removed afterwards")
    r.add_argument("--rebuilders", metavar="MODULE:NAME", default=None,
                   help="the pipeline's mapping of job type -> rebuild function (e.g. examples.regressor.steps:"
                   "REBUILDERS); default: this program's")
    r.add_argument("--threads", type=int, default=0, help="intra-op threads (default: the recorded count; another "
                   "count gives other bits on CPU)")
    r.set_defaults(handler=reproduce_main)
    i = add_command(sub, "impact", parents=common, help="everything derived from an artifact: models, ONNX files, "
                    "metrics, validations, promotions and the aliases that depend on it")
    i.add_argument("target", help="a file or folder anywhere on disk, or a reference (NAME:v0, NAME:production)")
    i.add_argument("--report", metavar="FILE", help="also write the picture: .html (self-contained SVG graph + "
                   "tree) or .svg (the graph)")
    i.set_defaults(handler=impact_main)


# --------------------------------------------------------------------------------------------- impact


def impact_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "impact")  # read-only
    if isinstance(store, Exit):
        return store
    recs, code = identify_target(store, ns.target, "impact")
    if recs is None:
        return code
    report = impact_mod.impact(store, recs[:1])
    if ns.report:
        try:
            report.report = str(write_picture(report, Path(ns.report)))
        except (ValueError, OSError) as e:
            err("impact", f"--report: {e}")
            return Exit.USAGE
    if ns.json:
        print(json.dumps(as_json(report), indent=2, default=str))
    else:
        print(impact_mod.render_tree(report))
        if ns.report:
            print(f"report: {report.report}")
    return Exit.OK


def write_picture(report: impact_mod.ImpactReport, path: Path) -> Path:
    from prefect_wandb.impact import render_html, render_svg

    if path.suffix not in (".html", ".svg"):
        raise ValueError(f"{path}: give a .html or .svg file")
    path.write_text(render_html(report) if path.suffix == ".html" else render_svg(report))
    return path.resolve()


# --------------------------------------------------------------------------------------------- reproduce


def _environment(recorded: dict) -> dict:
    """This host's code state (of this program's code root, else the folder the run recorded) and the installed
    versions of the distributions the recorded run lists."""
    import platform
    from pathlib import Path

    from prefect_wandb.environment import code_state, package_versions

    root = program().code_root or (Path(recorded["source_dir"]) if recorded.get("source_dir") else None)
    return {**code_state(root), "packages": package_versions(recorded.get("packages") or ()),
            "python": platform.python_version()}


def _rebuilders(spec: str | None):
    """The rebuild functions `--rebuilders MODULE:NAME` names, else this program's; CannotReproduce otherwise."""
    if not spec:
        return program().rebuilders
    import importlib

    module, _, name = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), name or "REBUILDERS")
    except (ImportError, AttributeError, ValueError) as e:
        raise R.CannotReproduce(f"--rebuilders {spec}: {type(e).__name__}: {e}") from None
    if not isinstance(found, dict) or not all(callable(f) for f in found.values()):
        raise R.CannotReproduce(f"--rebuilders {spec} is not a mapping of job type -> rebuild function")
    return found


def reproduce_main(ns: argparse.Namespace) -> int:
    store = open_store(ns.lineage_db, "reproduce")  # read-only: a reproduction records nothing
    if isinstance(store, Exit):
        return store
    recs, code = identify_target(store, ns.target, "reproduce")
    if recs is None:
        return code
    target = recs[0]
    try:
        rebuilders = _rebuilders(ns.rebuilders)
        recipe = R.plan_reproduction(store, target, rebuilders)
    except R.CannotReproduce as e:
        err("reproduce", str(e))
        return Exit.USAGE
    result: dict = {"target": target.label, "steps": [s.describe() for s in recipe.steps],
                    "inputs": [r.label for r in recipe.roots], "lineage_db": str(store.path)}
    gone = R.missing_inputs(recipe, store.deletions())
    if gone:
        result.update(status="inputs-gone", exit_code=Exit.NOT_FOUND, inputs_gone=gone)
        return _reproduce_out(ns, result, f"the recorded inputs are gone: {'; '.join(gone)}")
    warnings = R.environment_differences(recipe.first.env, _environment(recipe.first.env))
    for w in warnings:
        err("reproduce", f"warning: {w}")
    result["warnings"] = warnings
    scratch = Path(ns.workdir) if ns.workdir else Path(tempfile.mkdtemp(prefix="reproduce-"))
    try:
        if ns.workdir and scratch.exists() and any(scratch.iterdir()):
            err("reproduce", f"--workdir {scratch} is not empty")
            return Exit.USAGE
        run = R.run(recipe, rebuilders, scratch, threads=ns.threads or None)
    except R.CannotReproduce as e:
        err("reproduce", str(e))
        return Exit.USAGE
    except Exception as e:  # the step's own message, not a traceback
        err("reproduce", f"re-running failed: {type(e).__name__}: {e}")
        return Exit.FAILED
    finally:
        if not ns.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    result.update(notes=run.notes, comparisons=[c.to_dict() for c in run.comparisons],
                  workdir=str(scratch) if ns.workdir else None)
    differing = [f"{c.artifact}/{f}" for c in run.comparisons for f in c.differing]
    if all(c.identical for c in run.comparisons):
        result.update(status="identical", exit_code=Exit.OK)
        return _reproduce_out(ns, result, None)
    result.update(status="differs", exit_code=Exit.VERIFY_FAILED, differing=differing)
    return _reproduce_out(ns, result, f"DIFFERS: {', '.join(differing)}")


def _reproduce_out(ns, result: dict, message: str | None) -> int:
    if ns.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        lines = [f"Reproduce {result['target']} from {', '.join(result['inputs'])}: "
                 + " -> ".join(f"{s['job_type']} (run {s['run_id']})" for s in result["steps"])]
        for n in result.get("notes", []):
            lines.append(f"  note: {n}")
        for c in result.get("comparisons", []):
            lines.append(f"  {c['artifact']}: {'IDENTICAL' if c['identical'] else 'DIFFERS'} "
                         f"(recorded {c['digest_recorded'][:16]}, reproduced {(c['digest_reproduced'] or '-')[:16]})")
            for f in c["files"]:
                lines.append(f"    {f['status']:9s} {f['relpath']}"
                             + (f"  {(f['recorded'] or '-')[:16]} -> {(f['reproduced'] or '-')[:16]}"
                                if f["status"] != "identical" else ""))
        for g in result.get("inputs_gone", []):
            lines.append(f"  input gone: {g}")
        lines.append(result["status"].upper())
        print("\n".join(lines))
    if message:
        err("reproduce", message)
    return result["exit_code"]


