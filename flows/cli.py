"""`mnist-pipeline`: run the lineage pipeline from a shell.

Every field of PipelineConfig is a flag (data and train fields plain, e.g. --epochs; other sections prefixed,
e.g. --wandb-mode, --onnx-parity-atol); --config loads a JSON or YAML file first and flags override it.
Exit codes: 0 success, 1 the pipeline failed (the message says at which step), 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError

from flows import audit_cli, sweep_cli
from mnist_pipeline.config import ConfigError, PipelineConfig

UNPREFIXED = {"data", "train"}
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


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
    base: dict = {}
    if ns.config:
        text = Path(ns.config).read_text()
        if ns.config.endswith((".yaml", ".yml")):
            import yaml

            base = yaml.safe_load(text) or {}
        else:
            base = json.loads(text)
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
    serve.add_argument("--cron", default="0 3 * * 1", help="schedule of scheduled-retraining (default: %(default)s)")
    serve.add_argument("--timezone", default="UTC", help="timezone of the cron schedule (default: %(default)s)")
    serve.add_argument("--config", help="JSON or YAML file with the deployments' default PipelineConfig")
    _add_config_flags(serve)
    audit_cli.add_parsers(sub)  # audit, sync
    sweep_cli.add_parsers(sub, _add_config_flags)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    if ns.command in audit_cli.COMMANDS:  # no config, no Prefect: the auditor's commands start fast
        return audit_cli.main(ns)
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
        return _serve(cfg, ns.cron, ns.timezone)
    if ns.command in sweep_cli.COMMANDS:
        return sweep_cli.main(ns, cfg)
    # Prefect's temporary server would try to send telemetry; this tool points nowhere but where it is told.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import mnist_pipeline  # imported late: Prefect's import is slow and --help needn't pay

    state = mnist_pipeline(config=cfg, return_state=True)
    if not state.is_completed():
        try:
            state.result()
        except Exception as e:  # the failing step's own message, not a traceback
            print(f"mnist-pipeline: pipeline {state.name.lower()}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(state.result(), indent=2, default=str))
    return EXIT_OK


def _serve(cfg, cron: str, timezone: str) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("mnist-pipeline: serve needs a running Prefect server: start one with `prefect server start` and set "
              "PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        return EXIT_CONFIG
    from deployments.serve import serve_deployments

    serve_deployments(cfg, cron=cron, timezone=timezone)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
