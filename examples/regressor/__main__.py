"""`python -m examples.regressor [flags]`: one run of the flow; its files under ./regressor-runs (--root)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.regressor", description="Fit, export, validate, sign and "
                                "promote a ridge regressor of synthetic house prices, its lineage recorded.")
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--degree", type=int, default=2)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--force", action="store_true", help="fit even when nothing changed")
    p.add_argument("--wandb-mode", choices=["auto", "online", "offline", "disabled"], default="auto")
    p.add_argument("--root", default="regressor-runs", help="lineage.db and artifacts/ go here (%(default)s)")
    p.add_argument("--sign-key", help="EC private key (PEM) to sign the ONNX file; else $REGRESSOR_SIGN_KEY")
    args = p.parse_args(argv)
    from examples.regressor.flow import RegressorConfig, regressor_pipeline  # Prefect: after --help

    cfg = RegressorConfig.model_validate({k: v for k, v in vars(args).items() if v is not None})
    state = regressor_pipeline(config=cfg, return_state=True)
    sys.stdout.write(json.dumps(state.result(raise_on_failure=False), indent=2, default=str) + "\n")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
