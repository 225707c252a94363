"""`python -X importtime` output as a tree of cumulative seconds (how docs/performance.md found its imports).

    python -X importtime -c "import mnist_pipeline.flows.pipeline" 2> imp.txt
    python benchmarks/imptree.py imp.txt [max_depth=2] [min_seconds=0.1]
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def main(argv: list[str]) -> int:
    path, max_depth, min_s = argv[0], int(argv[1]) if len(argv) > 1 else 2, float(argv[2]) if len(argv) > 2 else 0.1
    rows = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:  # (cumulative µs, depth, module); importtime prints children before their parent
                rows.append((int(m[2]), len(m[3]) // 2, m[4]))
    print(f"total top-level cumulative: {sum(c for c, d, _ in rows if d == 0) / 1e6:.3f} s")
    for cumulative, depth, name in rows:
        if depth <= max_depth and cumulative / 1e6 >= min_s:
            print(f"{cumulative / 1e6:7.3f} {'  ' * depth}{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
