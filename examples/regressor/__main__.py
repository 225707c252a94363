"""`python -m examples.regressor [--alpha 0.5 ...]`: one run of the flow (a flag per field of RegressorConfig), its
files under ./regressor-runs; prints the run's summary as JSON and exits 0 when the flow run completed."""

from __future__ import annotations

import argparse
import json
import sys
import typing

from examples.regressor.steps import RegressorConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.regressor", description=__doc__)
    for name, f in RegressorConfig.model_fields.items():
        literal = typing.get_origin(f.annotation) is typing.Literal
        p.add_argument("--" + name.replace("_", "-"), help=f"{f.description} (default: {f.default})",
                       **{"action": "store_true"} if f.annotation is bool else
                       {"default": f.default, "choices": typing.get_args(f.annotation) if literal else None})
    cfg = RegressorConfig.model_validate(vars(p.parse_args(argv)))  # a bad value: pydantic says which, and why
    from examples.regressor.flow import regressor_pipeline  # Prefect: not for --help

    state = regressor_pipeline(config=cfg, return_state=True)
    sys.stdout.write(json.dumps(state.result(raise_on_failure=False), indent=2, default=str) + "\n")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
