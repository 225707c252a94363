"""`python -m examples.regressor [--alpha 0.5 ...]`: one run of the flow, its files under ./regressor-runs; a flag
for each field of `RegressorConfig`. Prints the run's summary as JSON; exit 0 when the flow run completed."""

from __future__ import annotations

import argparse
import json
import sys
import typing

from pydantic import ValidationError

from examples.regressor.steps import RegressorConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.regressor", description="Fit, export, validate, sign and "
                                "promote a ridge regressor of synthetic house prices, its lineage recorded.")
    for name, f in RegressorConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if f.annotation is bool or f.annotation == "bool":
            p.add_argument(flag, action="store_true", help=f.description)
        else:
            p.add_argument(flag, default=f.default, choices=typing.get_args(f.annotation) if typing.get_origin(
                           f.annotation) is typing.Literal else None,
                           help=f"{f.description} (default: %(default)s)")
    try:
        cfg = RegressorConfig.model_validate(vars(p.parse_args(argv)))
    except ValidationError as e:
        p.error(str(e))
    from examples.regressor.flow import regressor_pipeline  # Prefect: not for --help

    state = regressor_pipeline(config=cfg, return_state=True)
    sys.stdout.write(json.dumps(state.result(raise_on_failure=False), indent=2, default=str) + "\n")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
