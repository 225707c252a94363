"""mnist_pipeline/collector.py and the CLI's exit: fewer garbage-collector passes in a pipeline process, and no
full pass over everything the process made as it exits (measured in docs/performance.md, not timed here)."""

from __future__ import annotations

import gc
import subprocess
import sys

from mnist_pipeline.collector import GC_GEN0_THRESHOLD, fewer_collections
from tests.helpers import REPO


def test_fewer_collections_raises_the_first_threshold_and_never_lowers_one():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        fewer_collections()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
        gc.set_threshold(GC_GEN0_THRESHOLD * 2, 5, 5)
        fewer_collections()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 2, 5, 5)
    finally:
        gc.set_threshold(*before)


def test_the_program_exits_with_its_objects_frozen_and_its_exit_hooks_run():
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, gc.get_threshold()[0], flush=True))\n"
            "sys.argv = ['mnist-pipeline', 'show-config', '--epochs', '2']\n"
            "from mnist_pipeline.cli.main import entry\n"
            "entry()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"epochs": 2' in r.stdout  # the command's own output, then the exit hook's line
    assert r.stdout.strip().splitlines()[-1] == f"frozen True {GC_GEN0_THRESHOLD}", r.stdout[-500:]
