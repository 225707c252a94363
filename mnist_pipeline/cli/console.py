"""How `mnist-pipeline run` ends on the console: one clear last line, a traceback only when it helps.

- An expected failure (bad data, a refused config, an unreachable mirror, a full disk, a tampered input, a parity
  miss) is fully explained by its message: Prefect's engine logs its traceback to the flow run's logs in the API
  (kept there), but not on the console, where the CLI prints the message as the last line.
- An unexpected error keeps its traceback on the console too.
- SIGTERM and Ctrl-C (SIGINT) end the run within seconds: Prefect marks the flow run crashed, the running step is
  recorded as failed ("terminated by SIGTERM"), the Prefect server the run started stops with the process (as
  after any run), and the last line says so; the exit status is 128 + the signal's number, as a shell reports a
  killed command.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from mnist_pipeline.config import ConfigError
from mnist_pipeline.idx import DataError
from mnist_pipeline.mirrors import DownloadError
from prefect_wandb import DigestMismatch, RemoteArtifactsError, StoreError, storage

# ParityError (onnx_io) and TrainingDiverged (training: "the loss ... is nan (train.learning_rate 10 may be too
# large)") are expected too; they are looked up by name, so this module does not import torch and onnx (a skipped
# run needs neither).
EXPECTED = (DataError, DownloadError, storage.StorageError, ConfigError, DigestMismatch, StoreError,
            RemoteArtifactsError)
EXPECTED_BY_NAME = ("ParityError", "TrainingDiverged", "TerminationSignal")


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGINT (a BaseException, as
    KeyboardInterrupt is: no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        self.signal = signum
        name = signal.Signals(signum).name
        super().__init__(f"terminated by {name}" + (" (Ctrl-C)" if signum == signal.SIGINT else ""))


def is_expected(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:  # also when wrapped by Prefect or re-raised from another
        seen.add(id(exc))
        if isinstance(exc, (*EXPECTED, Terminated)) or storage.is_storage_error(exc) or \
                type(exc).__name__ in EXPECTED_BY_NAME:
            return True
        exc = exc.__cause__
    return False


class _NoExpectedTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_expected(record.exc_info[1]))


def quiet_expected_tracebacks() -> None:
    """On every console handler (not Prefect's API handler, which keeps the full record), drop the engine's
    records that carry the traceback of an expected failure."""
    from prefect.logging.handlers import APILogHandler

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if not isinstance(h, APILogHandler) and not any(isinstance(f, _NoExpectedTracebacks) for f in h.filters):
                h.addFilter(_NoExpectedTracebacks())


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGINT raise Terminated in the main thread; a second one falls back to the default action.

    Prefect's engine puts its own SIGTERM handler in place while the flow runs (it raises TerminationSignal,
    marks the flow run crashed) and then re-sends the signal to the handler it found: this one."""
    def handler(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process the default way
        raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
