"""The operator's commands on any pipeline's lineage records: `audit`, `sync` (`--dry-run`, `--verify`),
`impact`, `reproduce`, `rollback`, `unreject`, `gc`, `move`, `keygen` and `verify`.

`prefect-wandb COMMAND ...` runs them (`python -m prefect_wandb.cli`); a pipeline's own CLI adds them to its
parser with `add_parsers(sub, program=Program(prog="my-pipeline", rebuilders=..., ...))`, so that its operators
type `my-pipeline audit ...`. Every command returns an `Exit` member: one exit-code table for all of them.
"""

from __future__ import annotations

import argparse
import os
import sys

from prefect_wandb.cli import aliases, audit, gc, move, ops, signing
from prefect_wandb.cli.args import FORMATTER, Parents, Program, add_command, err, parents, program, use_program
from prefect_wandb.exit_codes import EPILOG, Exit, from_signal
from prefect_wandb.locations import scrub_argv

__all__ = ["EPILOG", "FORMATTER", "Exit", "Parents", "Program", "add_command", "add_parsers", "entry", "err",
           "from_signal", "main", "parents", "program", "use_program"]

# The modules that add sub-commands, in --help order: each has `add_parsers(sub, parents: Parents)`.
COMMAND_MODULES = (audit, ops, aliases, gc, move, signing)


def add_parsers(sub, program: Program | None = None, parents_: Parents | None = None) -> None:
    """Add every operator command to `sub` (an argparse sub-parsers object), for `program`."""
    if program is not None:
        use_program(program)
    p = parents_ or parents()
    for module in COMMAND_MODULES:
        module.add_parsers(sub, p)


def _parser(prog: Program) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog.prog, description=__doc__, formatter_class=FORMATTER, epilog=EPILOG)
    add_parsers(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), prog)
    return p


def main(argv: list[str] | None = None, program: Program | None = None) -> int:
    """Run one command (`argv`, default sys.argv[1:]) and return its exit code."""
    try:
        ns = _parser(program or Program()).parse_args(argv)
        scrub_argv()  # a --lineage-db password is not left where wandb and loggers read the command line
    except SystemExit as e:  # argparse's 2 for a usage error, 0 after --help
        return int(e.code or 0)
    return int(ns.handler(ns))


def entry() -> None:
    """The `prefect-wandb` program."""
    try:
        code = main()
    except BrokenPipeError:  # the reader went away (`... audit X | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = Exit.OK
    sys.exit(code)
