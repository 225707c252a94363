"""The exit codes of every command (`prefect-wandb`, or a pipeline's own CLI): one table, so a number means one thing everywhere.

Every command returns an `Exit` member (or 128 + N after signal N); `EPILOG` is the table as `--help` prints it and
`markdown()` the same table for the README (`python -m prefect_wandb.exit_codes` prints it). A new command
picks from these (a signature or digest that does not verify: VERIFY_FAILED; no attestation: NOT_FOUND; a policy
that forbids the request: REFUSED), and a new kind of outcome gets a new number here, never a second meaning for
an old one.
"""

from __future__ import annotations

import signal
import textwrap
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    VERIFY_FAILED = 3
    NOT_FOUND = 4
    WANDB_UNAVAILABLE = 5
    STORE = 6
    REFUSED = 7


MEANING: dict[Exit, str] = {
    Exit.OK: "success: done, verified, identical, or nothing left to do",
    Exit.FAILED: "the pipeline, a step or a trial failed, or some steps of sync/gc did not complete (each named); "
                 "the rest was done",
    Exit.USAGE: "usage or invalid configuration: bad flags or config, a target that is neither a file nor an "
                "artifact reference, no lineage store at --lineage-db, a folder that cannot be written",
    Exit.VERIFY_FAILED: "verification failed: TAMPERED (a file differs from its recorded digest), reproduce "
                        "DIFFERS, W&B differs from the lineage store (sync --verify, audit --online), a signature or signed "
                        "digest does not match (verify, audit)",
    Exit.NOT_FOUND: "not found: not produced by any recorded run, no such artifact version, no production model, "
                    "the recorded inputs are gone (deleted by gc, missing), no attestation for a file (verify)",
    Exit.WANDB_UNAVAILABLE: "W&B unreachable or refused: no API key, host unreachable, key refused, a W&B call "
                            "failed (the decision stays recorded; sync retries it)",
    Exit.STORE: "the lineage store is empty, damaged or not a lineage store, or missing beside artifacts it "
                "recorded (named; it is never written to)",
    Exit.REFUSED: "REFUSED by policy: rollback to a model that failed validation, no longer verifies or was "
                  "deleted by gc",
}
SIGNAL_MEANING = "ended by signal N (130 Ctrl-C, 143 SIGTERM): the flow run is marked crashed"


def from_signal(signum: int) -> int:
    """A shell's convention for a command a signal ended."""
    return 128 + int(signal.Signals(signum))


def _epilog() -> str:
    rows = [(str(int(c)), t) for c, t in MEANING.items()] + [("128+N", SIGNAL_MEANING)]
    lines = ["exit codes (the same for every command):"]
    for code, text in rows:
        lines.append(textwrap.fill(text, width=100, initial_indent=f"  {code:<7}", subsequent_indent=" " * 9))
    return "\n".join(lines) + "\n"


EPILOG = _epilog()


def markdown() -> str:
    """The table as Markdown, for the README."""
    rows = [f"| {int(c)} | {t} |" for c, t in MEANING.items()] + [f"| 128+N | {SIGNAL_MEANING} |"]
    return "\n".join(["| exit code | meaning |", "|---|---|", *rows]) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")  # noqa: T201 - `python -m prefect_wandb.exit_codes` prints the README table
