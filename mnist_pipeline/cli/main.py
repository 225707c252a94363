"""`mnist-pipeline`: run the lineage pipeline from a shell, and the commands that audit and operate on its records.

Every field of PipelineConfig is a flag of run, show-config, serve and sweep (data and train fields plain, e.g.
--epochs; other sections prefixed, e.g. --wandb-mode, --onnx-parity-atol); --config loads a JSON or YAML file
first and flags override it.

Without a configured Prefect API (PREFECT_API_URL, or a profile that sets it) `run` and `sweep` start a Prefect
server of their own (`prefect server start` on a free loopback port, started as the command begins and stopped as
it ends: `cli/local_server.py`). To keep one for repeated runs and the UI:
`prefect server start --background`, then PREFECT_API_URL=http://127.0.0.1:4200/api (`prefect server stop` ends it).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import cast

from mnist_pipeline.cli import sweep as sweep_cli
from mnist_pipeline.cli.args import (
    Parents,
    add_command,
    err,
    load_config,
    mnist_program,
    parents,
    prefect_defaults,
    setup_logging,
)
from mnist_pipeline.cli.local_server import ServerNotReady, api_of, no_prefect_api, server_for_this_run
from mnist_pipeline.collector import fewer_collections
from mnist_pipeline.config import ALLOWED_ROOTS_ENV, SCHEDULE_CRON, SCHEDULE_TIMEZONE, PipelineConfig
from mnist_pipeline.report.closing_lines import where_things_went
from mnist_pipeline.results import RunSummary
from prefect_wandb import scrub_argv
from prefect_wandb.cli import EPILOG, FORMATTER, Exit, from_signal
from prefect_wandb.cli import add_parsers as add_operator_parsers


def _parser() -> argparse.ArgumentParser:
    """The pipeline's own commands (run, show-config, serve, sweep), then the library's operator commands (audit,
    sync, impact, reproduce, rollback, unreject, gc, keygen, verify) as this program's. Each sets `handler=`: a
    function of the parsed namespace returning an `Exit` member."""
    p = argparse.ArgumentParser(prog="mnist-pipeline", description=__doc__, formatter_class=FORMATTER, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    P = parents()  # noqa: N806 - read as a namespace of parsers
    _add_parsers(sub, P)
    sweep_cli.add_parsers(sub, P)
    add_operator_parsers(sub, mnist_program())
    return p


def _add_parsers(sub, P: Parents) -> None:  # noqa: N803
    run = add_command(sub, "run", parents=[P.config], help="run the whole pipeline once (prepare-data, train, "
                      "evaluate, export-onnx, validate-onnx, promote, report) and print its summary as JSON")
    run.set_defaults(handler=run_main)
    show = add_command(sub, "show-config", parents=[P.config],
                       help="print the resolved config (defaults + file + flags) and exit")
    show.set_defaults(handler=show_config_main)
    serve = add_command(sub, "serve", parents=[P.config], help="serve the 'scheduled-retraining' (cron) and "
                        "'manual' deployments from this process; needs a Prefect server (PREFECT_API_URL), e.g. "
                        "`prefect server start --background`")
    serve.add_argument("--cron", default=SCHEDULE_CRON, help="schedule of scheduled-retraining (default: %(default)s)")
    serve.add_argument("--timezone", default=SCHEDULE_TIMEZONE, help="timezone of the cron schedule (default: %(default)s)")
    serve.add_argument("--allowed-roots", nargs="+", metavar="DIR", help="folders the deployments' runs may read "
                       "and write (default: the folders of the config served: data, artifacts, store, W&B)")
    serve.set_defaults(handler=serve_main)


def main(argv: list[str] | None = None) -> int:
    """Run one command (`argv`, default sys.argv[1:]) and return its exit code (argparse's 2 for a usage error,
    0 after --help)."""
    try:
        ns = _parser().parse_args(argv)
        scrub_argv()  # a --lineage-db password is not left where wandb (its run metadata) reads the command line
    except SystemExit as e:
        return int(e.code or 0)
    return int(ns.handler(ns))


def show_config_main(ns: argparse.Namespace) -> int:
    cfg = load_config(ns)
    if isinstance(cfg, Exit):
        return cfg
    print(cfg.model_dump_json(indent=2))
    return Exit.OK


def serve_main(ns: argparse.Namespace) -> int:
    setup_logging()
    cfg = load_config(ns)
    if isinstance(cfg, Exit):
        return cfg
    if no_prefect_api():
        err("", "serve needs a running Prefect server: start one with `prefect server start --background` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api")
        return Exit.USAGE
    if ns.allowed_roots:  # inherited by the flow runs this process starts
        os.environ[ALLOWED_ROOTS_ENV] = os.pathsep.join(str(Path(r).resolve()) for r in ns.allowed_roots)
    from mnist_pipeline.deployments.serve import serve_deployments

    serve_deployments(cfg, cron=ns.cron, timezone=ns.timezone)
    return Exit.OK


def run_main(ns: argparse.Namespace) -> int:
    setup_logging()
    cfg = load_config(ns)
    if isinstance(cfg, Exit):
        return cfg
    return _run(cfg)


def check_signing_key(cfg: PipelineConfig) -> Exit | None:
    """The run's signing key checked as the flow's `tasks.sign.check_key` checks it before any task (the same
    `keys.load_private`), here before Prefect is imported (its import writes its home folder, and
    `prefect_defaults` must come first): Exit.USAGE after one line when no run may sign with it; None: usable, or
    no key (not signed)."""
    from prefect_wandb.provenance.keys import KeyFileError, load_private

    key = cfg.resolved().signing_key()
    if key is None:
        return None
    try:
        load_private(key)
    except KeyFileError as e:
        err("", f"cannot sign with this key: {e}")
        return Exit.USAGE
    return None


def _run(cfg: PipelineConfig) -> int:
    from mnist_pipeline.cli import console
    from mnist_pipeline.flows import preflight
    from prefect_wandb import RemoteArtifactsError, StorageError, StoreError

    refused = check_signing_key(cfg)  # a usage error before any work, not a failed flow run after Prefect started
    if refused is not None:
        return refused
    try:  # an unwritable folder (W&B's, the store's...) fails before any work, not after wandb chose $TMPDIR
        preflight.check_writable(cfg.resolved())
        cfg.resolved().lineage().check_artifacts()
        preflight.check_store(cfg.resolved())
    except (StorageError, RemoteArtifactsError) as e:
        err("", f"cannot run here: {e}")
        return Exit.USAGE
    except StoreError as e:
        err("", str(e))
        return Exit.STORE
    prefect_defaults()
    without_api = no_prefect_api()
    if without_api and (done := _unchanged_before_prefect(cfg.resolved())) is not None:
        return done
    server = server_for_this_run() if without_api else None  # it starts beside what follows
    try:
        with console.signals_raise():  # SIGTERM / Ctrl-C: a crashed flow run, a failed step, one line, no hang
            from mnist_pipeline.flows.pipeline import mnist_lineage_pipeline  # imported late: Prefect's import is slow
            from mnist_pipeline.tasks import prepare_first_run

            console.quiet_expected_tracebacks()
            with api_of(server, meanwhile=prepare_first_run):
                state = mnist_lineage_pipeline(config=cfg, return_state=True)
            if not state.is_completed():
                try:
                    state.result()
                except Exception as e:  # the failing step's own message, not a traceback
                    line = f"mnist-pipeline: pipeline {(state.name or 'failed').lower()}: {type(e).__name__}: {e}"
                    if isinstance(e, StorageError):
                        line += " (not retried: it would fail the same way)"
                    return _say([line], Exit.FAILED)
    except console.Terminated as e:
        return _say([f"mnist-pipeline: {e}: the Prefect flow run is marked crashed and the running step failed "
                    "(recorded in the lineage store)"], from_signal(e.signal))
    except ServerNotReady as e:
        return _say([f"mnist-pipeline: {e}"], Exit.FAILED)
    summary = cast(RunSummary, state.result())  # a skipped run: a Completed state whose data is the summary
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return _say(list(where_things_went(summary)), Exit.OK)  # the report, the ONNX file, the W&B records


def _unchanged_before_prefect(cfg: PipelineConfig) -> int | None:
    """Without a configured Prefect API, a run that would only find that nothing changed is told from the lineage
    store before a Prefect server is started for the run (most of such a run's time): the skip's summary, as
    the flow prints it, and a line saying that no flow run was made. None: the run goes ahead as a flow run."""
    from mnist_pipeline import changes
    from prefect_wandb import LineageStore, where_records_went

    quick = changes.unchanged_before_prefect(cfg)
    if quick is None:
        return None
    found, dataset = quick
    # no stage run, so nothing went to W&B (as in a skipped flow run): said without importing wandb
    wandb = where_records_went(LineageStore(cfg.lineage_db), None, command=cfg.lineage().command)
    summary = changes.skipped(cfg, found, dataset, {}, wandb)
    print(json.dumps(summary.to_dict(), indent=2, default=str))
    return _say([f"mnist-pipeline: {summary.reason}",
                       "mnist-pipeline: decided from the lineage store without starting Prefect (no Prefect API is "
                       "configured): no flow run was made; against a Prefect server (PREFECT_API_URL) every run is a "
                       "flow run"], Exit.OK)


def _say(lines: list[str], code: int) -> int:
    for line in lines:
        print(line, file=sys.stderr)
    return code


def entry() -> None:
    """The `mnist-pipeline` program."""
    fewer_collections()  # from the start: importing torch, Prefect and wandb makes a third of the passes
    try:
        code = main()
    except BrokenPipeError:  # the reader went away (`mnist-pipeline audit ... | head`): nothing left to say
        # Python's documented recipe: point stdout at devnull so the flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = Exit.OK
    # Everything this process made lives until it exits: the cyclic garbage collector's last pass over it at exit
    # (torch, Prefect, wandb and pydantic objects by the hundred thousand) took 2.4 s of a 22 s cold run, with
    # nothing left to free. Frozen objects are skipped by that pass; exit hooks (the run's Prefect server, W&B,
    # the last lines) still run, and memory goes back to the OS with the process.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
