"""The short table `benchmarks/gpu_check.sh` prints last: the README command's run and the benchmark's figures,
ratios and targets, read from the folder the script wrote them to.

    python -m benchmarks.gpu_summary RESULTS_DIR DEVICE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(d: Path, device: str) -> tuple[str, list[tuple[str, str]]]:
    """The table's title and its (label, value) rows, from `readme-run.json`, `readme-run.wall` and
    `results-DEVICE.json` in `d`."""
    run = json.loads((d / "readme-run.json").read_text())
    res = json.loads((d / f"results-{device}.json").read_text())
    f, r, c = res["figures"], res["ratios"], res.get("cold") or {}
    out = [("README command, cold (s)", (d / "readme-run.wall").read_text().strip()),
           ("  its status / test accuracy", f"{run.get('status')} / {run.get('test_accuracy')}")]
    out += [(f"{p} wall s (train s)", f"{f[p]['wall_s']:.2f} ({f[p]['train_s']:.2f})")
            for p in ("tutorial", "pipeline", "loop")]
    out += [("train stage s", f"{f['pipeline']['stages_s'].get('train', float('nan')):.2f}"),
            ("pipeline peak RSS MiB", f"{f['pipeline']['peak_rss_mib']:.0f}")]
    if c:
        out += [("cold tutorial / README cmd / rerun s",
                 f"{c['tutorial']['wall_s']:.2f} / {c['cli']['wall_s']:.2f} / {c['rerun']['wall_s']:.2f}")]
        if "first" in c:
            out += [("first run on a fresh machine s", f"{c['first']['wall_s']:.2f}")]
    out += [(k, f"{v:.3f}") for k, v in r.items()]
    figures = res.get("target_figures", {})
    out += [(k, ("met" if ok else "MISSED") + (f" ({figures[k]:.3f})" if figures.get(k) is not None else ""))
            for k, ok in res["targets"].items()]
    return f"gpu_check on {device}: {res['machine']}", out


def main(argv: list[str] | None = None) -> int:
    d, device = argv if argv is not None else sys.argv[1:]
    title, table = rows(Path(d), device)
    w = max(len(k) for k, _ in table)
    print(title)
    for k, v in table:
        print(f"  {k:<{w}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
