"""`mnist-pipeline`: run the lineage pipeline from a shell.

Every field of PipelineConfig is a flag (data and train fields plain, e.g. --epochs; other sections prefixed,
e.g. --wandb-mode, --onnx-parity-atol); --config loads a JSON or YAML file first and flags override it.
Exit codes: 0 success, 1 the pipeline failed (the message says at which step), 2 invalid configuration (or a
folder that cannot be written), 6 the lineage store is damaged, or missing beside artifacts it recorded,
128 + N ended by signal N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ValidationError

from mnist_pipeline import config as config_file
from mnist_pipeline.config import ALLOWED_ROOTS_ENV, SCHEDULE_CRON, SCHEDULE_TIMEZONE, ConfigError, PipelineConfig
from mnist_pipeline.flows import audit_cli, ops_cli, sweep_cli
from mnist_pipeline.report.console import where_things_went

UNPREFIXED = {"data", "train"}
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# Imported lazily by the stages that need them; a cold run imports them while its Prefect server starts anyway.
PREFETCH = ("torch", "torchvision.datasets", "mnist_pipeline.lineage.wandb_io:warm_up", "mnist_pipeline.training",
            "mnist_pipeline.metrics", "onnx", "onnxruntime", "mnist_pipeline.onnx_io",
            "mnist_pipeline.report.plots:warm_up")


def _flags(model: type[BaseModel], prefix: str = "") -> list[tuple[str, tuple[str, ...], typing.Any]]:
    """(flag, path into the config, field info) for every leaf field of the config model."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub = "" if name in UNPREFIXED else f"{name}-"
            out += [(flag, (name, *path), f) for flag, path, f in _flags(ann, sub)]
        else:
            out.append((f"--{prefix}{name.replace('_', '-')}", (name,), field))
    return out


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline config (defaults are the W&B tutorial's)")
    for flag, path, field in _flags(PipelineConfig):
        args = typing.get_args(field.annotation)
        origin = typing.get_origin(field.annotation)
        kw: dict = {"dest": "cfg:" + ".".join(path), "default": argparse.SUPPRESS, "metavar": path[-1].upper(),
                    "help": f"{field.description} (default: {field.get_default(call_default_factory=True)})"}
        if field.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list or any(typing.get_origin(a) is list for a in args):
            kw["nargs"] = "+"
        if origin is typing.Literal:
            kw["choices"] = list(args)
        group.add_argument(flag, **kw)


def build_config(ns: argparse.Namespace) -> PipelineConfig:
    base = config_file.load_config_file(ns.config) if ns.config else {}
    for key, value in vars(ns).items():
        if key.startswith("cfg:"):
            node = base
            *parents, leaf = key[4:].split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return PipelineConfig.model_validate(base)


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "config"
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
        parts.append(f"{where}: {err['msg']}{got}")
    return "invalid configuration: " + "; ".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mnist-pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the whole pipeline once (prepare-data, train, evaluate, export-onnx, "
                         "validate-onnx) and print its summary as JSON")
    run.add_argument("--config", help="JSON or YAML file with a PipelineConfig; flags override it")
    _add_config_flags(run)
    show = sub.add_parser("show-config", help="print the resolved config (defaults + file + flags) and exit")
    show.add_argument("--config", help="JSON or YAML file with a PipelineConfig")
    _add_config_flags(show)
    serve = sub.add_parser("serve", help="serve the 'scheduled-retraining' (cron) and 'manual' deployments from "
                           "this process; needs a Prefect server (PREFECT_API_URL), e.g. `prefect server start`")
    serve.add_argument("--cron", default=SCHEDULE_CRON, help="schedule of scheduled-retraining (default: %(default)s)")
    serve.add_argument("--timezone", default=SCHEDULE_TIMEZONE, help="timezone of the cron schedule (default: %(default)s)")
    serve.add_argument("--config", help="JSON or YAML file with the deployments' default PipelineConfig")
    serve.add_argument("--allowed-roots", nargs="+", metavar="DIR", help="folders the deployments' runs may read "
                       "and write (default: the folders of the config served: data, artifacts, store, W&B)")
    _add_config_flags(serve)
    audit_cli.add_parsers(sub)  # audit, sync
    ops_cli.add_parsers(sub)  # reproduce, impact, rollback, gc
    sweep_cli.add_parsers(sub, _add_config_flags)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command in audit_cli.COMMANDS:  # no config, no Prefect: the auditor's commands start fast
        return audit_cli.main(ns)
    if ns.command in ops_cli.COMMANDS:  # the operator's commands: the lineage store, no Prefect
        return ops_cli.main(ns)
    # Our own progress at INFO; libraries (httpx logs every API call at INFO) only when they warn. Prefect prints
    # its flow and task run logs through its own console handler.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mnist_pipeline").setLevel(logging.INFO)
    try:
        cfg = build_config(ns)
        cfg.resolved()  # the paths, checked against $MNIST_PIPELINE_ALLOWED_ROOTS as the flow will
    except ValidationError as e:
        print(f"mnist-pipeline: {format_validation_error(e)}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as e:
        print(f"mnist-pipeline: invalid configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, ValueError) as e:
        print(f"mnist-pipeline: cannot read --config: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if ns.command == "show-config":
        print(cfg.model_dump_json(indent=2))
        return EXIT_OK
    if ns.command == "serve":
        if ns.allowed_roots:  # inherited by the flow runs this process starts
            os.environ[ALLOWED_ROOTS_ENV] = os.pathsep.join(str(Path(r).resolve()) for r in ns.allowed_roots)
        return _serve(cfg, ns.cron, ns.timezone)
    if ns.command in sweep_cli.COMMANDS:
        return sweep_cli.main(ns, cfg)
    return _run(cfg)


def _run(cfg: PipelineConfig) -> int:
    from mnist_pipeline.flows import console, preflight
    from mnist_pipeline.lineage.store import StoreError
    from mnist_pipeline.storage import StorageError

    try:  # an unwritable folder (W&B's, the store's...) fails before any work, not after wandb chose $TMPDIR
        preflight.check_writable(cfg.resolved())
        preflight.check_store(cfg.resolved())
    except StorageError as e:
        print(f"mnist-pipeline: cannot run here: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as e:
        print(f"mnist-pipeline: {e}", file=sys.stderr)
        return audit_cli.EXIT_STORE
    # Prefect's temporary server would try to send telemetry; this tool points nowhere but where it is told.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from mnist_pipeline.flows import prefect_server

    lease = prefect_server.start_early()  # a Prefect server boots on the other core while we import
    keep = console.running_servers()  # a server someone else started (a test harness) is not ours to stop
    try:
        with console.signals_raise():  # SIGTERM / Ctrl-C: a crashed flow run, a failed step, one line, no hang
            from mnist_pipeline.flows.pipeline import mnist_pipeline  # imported late: Prefect's import is slow

            console.quiet_expected_tracebacks()
            with prefect_server.use(lease, prefetch=PREFETCH):
                state = mnist_pipeline(config=cfg, return_state=True)
            line, code = None, EXIT_OK
            if not state.is_completed():
                code = EXIT_FAILED
                try:
                    state.result()
                except Exception as e:  # the failing step's own message, not a traceback
                    line = f"mnist-pipeline: pipeline {(state.name or 'failed').lower()}: {type(e).__name__}: {e}"
                    if isinstance(e, StorageError):
                        line += " (not retried: it would fail the same way)"
    except console.Terminated as e:
        console.stop_temporary_server(keep)
        print(f"mnist-pipeline: {e}: the Prefect flow run is marked crashed and the running step failed "
              f"(recorded in the lineage store)", file=sys.stderr)
        return 128 + e.signal
    console.stop_temporary_server(keep)  # before our last line, not after it
    if line:
        print(line, file=sys.stderr)
        return code
    summary = cast(dict, state.result())  # a skipped run returns a Completed state whose data is the summary
    print(json.dumps(summary, indent=2, default=str))
    for line in where_things_went(summary):  # the report, the ONNX file, where the W&B records went
        print(line, file=sys.stderr)
    return EXIT_OK


def _serve(cfg, cron: str, timezone: str) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("mnist-pipeline: serve needs a running Prefect server: start one with `prefect server start` and set "
              "PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return EXIT_CONFIG
    from mnist_pipeline.deployments.serve import serve_deployments

    serve_deployments(cfg, cron=cron, timezone=timezone)
    return EXIT_OK


def entry() -> None:
    """The `mnist-pipeline` program: `main`, then an exit that skips the interpreter's teardown.

    Everything an exit must do still happens, in the interpreter's order: other non-daemon threads are joined, then
    the atexit handlers run (wandb's service teardown, Prefect's log and event workers draining to the server,
    logging's flush). What is skipped is the module-by-module teardown of torch, onnxruntime, wandb and Prefect
    that follows, which only frees memory the OS frees anyway: 1-2 s on two cores, much more on a busy machine
    (docs/performance.md). The exit code is main's."""
    import atexit
    import threading

    try:
        code = main()
    except BrokenPipeError:  # the reader went away (`mnist-pipeline audit ... | head`): nothing left to say
        code = EXIT_OK
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
