"""Entry point of ``make bench``: every case, platform and baselines alternated, then the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.cases import CASES
from benchmarks.env import bench_env
from benchmarks.harness import CaseResult, run_case
from benchmarks.report import environment, write_all
from kitty_tasks.core.settings import DEFAULT_RESULT_BACKEND

__all__ = ["main"]

#: Where results go: ``results/<date>.json``, ``RESULTS.md`` and the plot.
HERE = Path(__file__).parent


def _log(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small trials, 3 pairs: for development"
    )
    parser.add_argument("--pairs", type=int, help="measured rounds per case (default 5, quick 3)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="unmeasured rounds before (default 1)"
    )
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="cases to run"
    )
    parser.add_argument(
        "--out", type=Path, default=HERE, help="directory for RESULTS.md and results/"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--result-backend",
        metavar="URL",
        help="KITTY_RESULT_BACKEND for the platform's cases, e.g. rpc:// to compare enqueue "
        "against the default store (default: the environment's, else the SQLite file)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen cases in a fresh vhost and write the results."""
    args = parse_args(argv)
    if args.result_backend:
        # Before the Celery app reads its settings (on first use, in a case's set-up);
        # worker subprocesses inherit it.
        os.environ["KITTY_RESULT_BACKEND"] = args.result_backend
    pairs = args.pairs or (3 if args.quick else 5)
    started = time.time()
    results: list[CaseResult] = []
    with bench_env() as env:
        # Modules that read RABBITMQ_URL at import (Dramatiq's broker) must see our vhost.
        os.environ["RABBITMQ_URL"] = env.url
        _log(f"vhost {env.vhost}: {pairs} pairs after {args.warmup} warm-up round(s)")
        meta = environment(env)
        for name in args.cases:
            case = CASES[name]()
            _log(f"{name}: {case.title}")
            t0 = time.time()
            results.append(
                run_case(case, env, pairs=pairs, warmup=args.warmup, quick=args.quick, log=_log)
            )
            _log(f"{name}: {time.time() - t0:.0f}s")
    meta.update(
        {
            "result_backend": os.environ.get("KITTY_RESULT_BACKEND", DEFAULT_RESULT_BACKEND),
            "quick": args.quick,
            "pairs": pairs,
            "warmup": args.warmup,
            "seconds": time.time() - started,
        }
    )
    for result in results:
        for verdict in result.verdicts():
            ratio = verdict["ratio"]
            _log(
                f"{'MET ' if verdict['met'] else 'MISS'} {verdict['label']}: "
                f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"
            )
    if not args.no_write:
        for path in write_all(results, meta, args.out):
            _log(f"wrote {path}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
