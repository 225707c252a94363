"""`mnist-pipeline sweep`: a hyperparameter sweep on Dask (a local cluster, or --dask-address).

The sweep file and every trial's config are checked before anything starts (exit 2, one line). 0: every trial
finished and the winner went through the gate; 1: the sweep failed or some trial failed (the summary says which);
128 + N: ended by signal N (the Prefect server and the local Dask cluster it started stop with it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from contextlib import ExitStack
from typing import Any, cast

from mnist_pipeline.cli.args import Parents, add_command, err, load_config, prefect_defaults, setup_logging
from mnist_pipeline.cli.local_server import ServerNotReady, api_of, no_prefect_api, server_for_this_run
from mnist_pipeline.config import PipelineConfig
from prefect_wandb.cli import Exit, from_signal


def add_parsers(sub, parents: Parents) -> None:
    p = add_command(sub, "sweep", parents=[parents.config], help="hyperparameter sweep on Dask: one trial (train + "
                    "evaluate) per configuration of a W&B-format sweep file, the best exported, validated and "
                    "promoted; JSON summary")
    p.add_argument("--sweep", required=True, metavar="FILE",
                   help="sweep file (YAML or JSON, W&B sweep-config format: method grid|random, metric, "
                   "parameters, run_cap)")
    p.add_argument("--dask-address", metavar="ADDR",
                   help="run the trials on an existing Dask cluster (tcp://host:8786); default: a local cluster")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local cluster: N worker processes (default: one per core); with --dask-address: wait "
                   "for N workers before starting")
    p.set_defaults(handler=main)


def _prefect_api(stack: ExitStack) -> None:
    """Trials run in other processes: they must reach the same Prefect API as the flow. Without a configured
    server, the sweep starts a Prefect server for itself, as `run` does (`local_server.server_for_this_run`; it
    stops at exit), and its URL goes into the settings the trials get."""
    if no_prefect_api():
        stack.enter_context(api_of(server_for_this_run()))


def quiet_dask() -> None:
    """Dask's own logs only when something is wrong: its INFO and WARNING lines tell the life of the scheduler and
    workers (a normal end reads "Worker process still alive after 4.0 seconds, killing ... killed by signal 9"),
    and what matters of it, a trial lost with its worker, is the flow's own log. Set in Dask's config before
    `distributed` is imported, which applies it to its loggers here and in every worker process it starts."""
    import dask

    dask.config.set({"logging.distributed": "error"})


def main(ns: argparse.Namespace) -> int:
    setup_logging()
    prefect_defaults()
    cfg = load_config(ns)
    if isinstance(cfg, Exit):
        return cfg
    from mnist_pipeline.sweep import SweepError, expand, load_sweep

    try:
        spec = load_sweep(ns.sweep)
        trials = expand(spec, cfg.resolved())
    except SweepError as e:
        err("", f"invalid sweep: {e}")
        return Exit.USAGE
    from mnist_pipeline.cli.main import check_signing_key

    refused = check_signing_key(cfg)  # the winner is signed: an unusable key is refused before any trial
    if refused is not None:
        return refused
    if ns.workers is not None and ns.workers < 1:
        err("", f"--workers must be at least 1, got {ns.workers}")
        return Exit.USAGE
    quiet_dask()
    from mnist_pipeline.sweep_workers import wait_for_scheduler

    if ns.dask_address:
        try:
            wait_for_scheduler(ns.dask_address)
        except (ConnectionError, ValueError) as e:
            err("", str(e))
            return Exit.FAILED
    print(f"mnist-pipeline: sweep of {len(trials)} trial(s) ({spec.method}, by {spec.metric.name} "
          f"{spec.metric.goal})", file=sys.stderr)
    from mnist_pipeline.cli import console

    try:
        # SIGTERM / Ctrl-C raise here, so the stack below unwinds (the local Dask cluster closes) and the process
        # exits normally, which stops the Prefect server it started (the default action left it running, an orphan)
        with console.signals_raise():
            return _sweep(spec, cfg, ns)
    except console.Terminated as e:
        print(f"mnist-pipeline: {e}: the sweep's Prefect flow run is marked crashed; trials finished so far stay in "
              "the lineage store", file=sys.stderr)
        return from_signal(e.signal)
    except ServerNotReady as e:
        err("", str(e))
        return Exit.FAILED


def _sweep(spec, cfg: PipelineConfig, ns: argparse.Namespace) -> int:
    from mnist_pipeline.flows.sweep import mnist_sweep, task_runner

    with ExitStack() as stack:
        _prefect_api(stack)
        if not ns.dask_address:
            import dask

            # a local cluster's scratch space is ours, removed at the end (Dask's default stays behind)
            scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="mnist-dask-"))
            stack.enter_context(dask.config.set({"temporary-directory": scratch}))
        runner = task_runner(ns.dask_address, ns.workers)
        min_workers = ns.workers if ns.dask_address and ns.workers else 1
        # prefect-dask's runner is typed over its own future class, which Flow.with_options does not accept
        sweep_flow = mnist_sweep.with_options(task_runner=cast(Any, runner))
        state = sweep_flow(config=cfg, sweep=spec, min_workers=min_workers, return_state=True)
        if not state.is_completed():
            try:
                state.result()
            except Exception as e:
                print(f"mnist-pipeline: sweep {(state.name or 'failed').lower()}: {type(e).__name__}: {e}",
                      file=sys.stderr)
            return Exit.FAILED
        summary = state.result()
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    from mnist_pipeline.report.closing_lines import where_things_went

    for line in where_things_went(summary):  # as `run` ends: the report, the ONNX file to audit, the W&B records
        print(line, file=sys.stderr)
    if summary.failed:
        err("", f"{len(summary.failed)} trial(s) failed: {summary.failed}")
        return Exit.FAILED
    return Exit.OK
