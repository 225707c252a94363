"""What the pipeline's own commands (run, show-config, serve, sweep) share: the config flags (`P.config`), the
program the operator commands run in (`mnist_program`), logging and Prefect defaults. The parsers, the error line and the
exit codes are the library's (`prefect_wandb.cli`): one table for every command.
"""

from __future__ import annotations

import argparse
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from mnist_pipeline.config import ConfigError, PipelineConfig, confine
from mnist_pipeline.config_file import load_config_file
from prefect_wandb import redact
from prefect_wandb.cli import Exit, Program, add_command, err

DEFAULT_DB = "mnist-runs/lineage.db"
UNPREFIXED = {"data", "train"}  # their fields are plain flags (--epochs); other sections prefixed (--wandb-mode)
SHORT_FLAGS = {"--sign-private-key": ("--sign-key",)}  # the names the docs use, beside the generated ones
__all__ = ["Parents", "add_command", "err", "load_config", "mnist_program", "parents", "prefect_defaults", "setup_logging"]


def mnist_program() -> Program:
    """The operator commands as `mnist-pipeline COMMAND`: this pipeline's store, rebuild functions, code, packages,
    allowed roots, key file names and model."""
    from mnist_pipeline.config import ALLOWED_ROOTS_ENV, MODEL_NAME, PACKAGES, SOURCE_ROOT
    from mnist_pipeline.reproduce import REBUILDERS

    return Program(prog="mnist-pipeline", default_store=DEFAULT_DB, rebuilders=REBUILDERS, code_root=SOURCE_ROOT,
                   packages=PACKAGES, allowed_roots_env=ALLOWED_ROOTS_ENV, key_name="mnist-signing",
                   model_name=MODEL_NAME)


def setup_logging() -> None:
    """Our own progress at INFO; libraries (httpx logs every API call at INFO) only when they warn. Prefect prints
    its flow and task run logs through its own console handler."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("mnist_pipeline", "prefect_wandb"):
        logging.getLogger(name).setLevel(logging.INFO)


def prefect_defaults() -> None:
    """Before Prefect is imported, defaults for the Prefect server a run starts when no API is configured (the
    user's own settings win): no telemetry from a tool that points nowhere but where it is told, and 90 s to start
    on a small, busy machine (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, Prefect's own 20 s for its
    temporary server)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


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


def _config_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", help="JSON or YAML file with a PipelineConfig; flags override it")
    group = p.add_argument_group("pipeline config (defaults are the W&B tutorial's)")
    for flag, path, field in _flags(PipelineConfig):
        args = typing.get_args(field.annotation)
        origin = typing.get_origin(field.annotation)
        kw: dict = {"dest": "cfg:" + ".".join(path), "default": argparse.SUPPRESS, "metavar": path[-1].upper(),
                    "help": f"{field.description} (default: {field.get_default(call_default_factory=True)})".replace("%", "%%")}
        if field.annotation is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list or any(typing.get_origin(a) is list for a in args):
            kw["nargs"] = "+"
        if origin is typing.Literal:
            kw["choices"] = list(args)
        group.add_argument(flag, *SHORT_FLAGS.get(flag, ()), **kw)
    return p


@dataclass(frozen=True)
class Parents:
    """The parent parsers of the pipeline's own commands: `config` (--config and every config flag)."""

    config: argparse.ArgumentParser


def parents() -> Parents:
    return Parents(config=_config_parent())


def build_config(ns: argparse.Namespace) -> PipelineConfig:
    if ns.config:
        confine("--config", Path(ns.config))  # read only from inside the allowed roots, when they are set
    base = load_config_file(ns.config) if ns.config else {}
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
    for error in e.errors():
        where = ".".join(str(x) for x in error["loc"]) or "config"
        got = f" (got {redact(repr(error['input']))})" if "input" in error and not isinstance(error["input"], dict) \
            else ""
        parts.append(f"{where}: {error['msg']}{got}")
    return "invalid configuration: " + "; ".join(parts)


def load_config(ns: argparse.Namespace) -> PipelineConfig | Exit:
    """The resolved config (defaults + file + flags, paths checked against $MNIST_PIPELINE_ALLOWED_ROOTS as the
    flow will), or Exit.USAGE after one line."""
    try:
        cfg = build_config(ns)
        cfg.resolved()
    except ValidationError as e:
        err("", format_validation_error(e))
        return Exit.USAGE
    except ConfigError as e:
        err("", f"invalid configuration: {e}")
        return Exit.USAGE
    except (OSError, ValueError) as e:
        err("", f"cannot read --config: {e}")
        return Exit.USAGE
    return cfg
