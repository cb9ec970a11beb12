"""Draw a trace's spans (JSON from tests/integration/test_tracing.py) as a text timeline.

Usage: ``python scripts/trace_timeline.py spans.json`` prints the block docs/tracing.md shows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

WIDTH = 60


def main() -> None:
    """Print one line per span: its process, its name and a bar where it ran."""
    rows = json.loads(Path(sys.argv[1]).read_text())
    start = min(r["start"] for r in rows)
    end = max(r["end"] for r in rows)
    scale = WIDTH / max(1, end - start)
    name_width = max(len(r["name"]) for r in rows)
    process_width = max(len(r["process"]) for r in rows)
    for r in rows:
        left = int((r["start"] - start) * scale)
        length = max(1, int((r["end"] - r["start"]) * scale))
        bar = " " * left + "█" * length
        ms = (r["end"] - r["start"]) / 1e6
        label = f"{r['process']:<{process_width}}  {r['name']:<{name_width}}"
        print(f"{label}  |{bar:<{WIDTH}}| {ms:7.1f} ms")
    total = f"{(end - start) / 1e6:.0f} ms"
    print(f"{'':<{process_width + name_width + 2}}   0 ms{total:>{WIDTH - 3}}")


if __name__ == "__main__":
    main()
