"""`python -m tests.wandb_standin [--port N] [--state DIR] [--api-key KEY]`: serve until SIGTERM / Ctrl-C (exit 0),
after printing `WANDB_BASE_URL=...` and `WANDB_API_KEY=...`. `--dump --state DIR` prints what DIR holds as JSON."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from tests.wandb_standin.model import Model
from tests.wandb_standin.server import Standin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.wandb_standin", description=__doc__)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: one the OS picks)")
    p.add_argument("--state", type=Path, help="keep the state in this folder (and read it back on start)")
    p.add_argument("--api-key", help="the key to accept (default: a new random one)")
    p.add_argument("--entity", default="standin-entity")
    p.add_argument("--dump", action="store_true", help="print the state kept in --state as JSON and exit")
    p.add_argument("--raw", action="store_true", help="with --dump: the raw state, not the summary")
    a = p.parse_args(argv)
    if a.dump:
        if not a.state or not (a.state / "state.json").is_file():
            print(f"error: --dump needs --state DIR holding a state.json (got {a.state})", file=sys.stderr)
            return 2
        m = Model("http://127.0.0.1", a.entity, a.state)
        print(json.dumps(m.data if a.raw else m.summary(), indent=2, sort_keys=True))
        return 0
    try:
        w = Standin(port=a.port, state_dir=a.state, api_key=a.api_key, entity=a.entity)
    except OSError as e:
        print(f"error: cannot listen on 127.0.0.1:{a.port}: {e.strerror}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with w:
        print(f"WANDB_BASE_URL={w.url}", flush=True)
        print(f"WANDB_API_KEY={w.api_key}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
