"""Where the time goes: run one case's platform variants under py-spy and print the hot frames.

``python -m benchmarks.profile task_enqueue`` samples every thread and subprocess
(``--subprocesses``), so it sees the EventBus consumer threads and Celery's pool children.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.cases import CASES
from benchmarks.env import bench_env

__all__ = ["main", "summarise"]

#: Frames shown per profile.
TOP = 40
_PATH = re.compile(r"\s*\((?:.*?/(?:site-packages|lib/python3\.\d+|work/main)/)?")


def _frame(text: str) -> str:
    return _PATH.sub(" (", text, count=1)


def summarise(raw: Path, top: int = TOP, only: str | None = None) -> str:
    """Inclusive share of samples per frame, from py-spy's ``--format raw`` output.

    With ``only``, just the stacks matching that regex (e.g. one consumer thread's loop).
    """
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if only and not re.search(only, stack):
            continue
        samples = int(count)
        total += samples
        for frame in dict.fromkeys(_frame(f) for f in stack.split(";")[1:]):
            inclusive[frame] += samples
    lines = [f"{total} samples" + (f" in stacks matching {only!r}" if only else "")]
    lines += [f"{100 * n / total:5.1f}%  {f[:140]}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _target(case_name: str, rounds: int) -> None:
    """Run the platform variants of ``case_name`` ``rounds`` times (the profiled process)."""
    with bench_env() as env:
        os.environ["RABBITMQ_URL"] = env.url
        case = CASES[case_name]()
        case.setup(env, quick=True)
        try:
            for _ in range(rounds):
                for variant in case.variants():
                    if variant.platform:
                        variant.run()
        finally:
            case.teardown()


def main(argv: list[str] | None = None) -> int:
    """Profile a case under py-spy, or (``--target``) be the profiled process."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--only", help="regex: keep only stacks matching it (e.g. a thread's loop)")
    parser.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        _target(args.case, args.rounds)
        return 0
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        command = [
            spy, "record", "--subprocesses", "--rate", str(args.rate), "--format", "raw",
            "--output", str(raw), "--", sys.executable, "-m", "benchmarks.profile", args.case,
            "--rounds", str(args.rounds), "--target",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        print(summarise(raw, only=args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
