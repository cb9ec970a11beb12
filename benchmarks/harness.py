"""A/B alternation: a case runs its platform path and baselines in turn; ratios per round."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.cpu import CpuClock
from benchmarks.env import BenchEnv

__all__ = [
    "Case",
    "CaseResult",
    "Sample",
    "Target",
    "Variant",
    "measure",
    "percentile",
    "run_case",
]

Metric = Literal["rate", "p50", "p99"]


@dataclass
class Sample:
    """One timed trial of one variant."""

    messages: int
    seconds: float
    client_cpu: float
    broker_cpu: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds if self.seconds > 0 else float("nan")

    def value(self, metric: Metric) -> float:
        """The sample's figure for ``metric`` (latencies in seconds)."""
        if metric == "rate":
            return self.rate
        return percentile(self.latencies, 50 if metric == "p50" else 99)


@dataclass(frozen=True)
class Variant:
    """A way to do the case's work: the platform's path or a baseline."""

    name: str
    run: Callable[[], Sample]
    platform: bool = False


@dataclass(frozen=True)
class Target:
    """An issue target: ``platform``'s metric over ``baseline``'s, compared with a threshold."""

    label: str
    platform: str
    baseline: str
    metric: Metric = "rate"
    op: Literal[">=", "<="] = ">="
    threshold: float = 1.0


class Case:
    """One row of the issue's table; subclasses set up resources and list variants and targets."""

    name = ""
    title = ""
    #: True during the warm-up rounds: a case may run smaller trials then.
    warming = False

    def setup(self, env: BenchEnv, *, quick: bool) -> None:
        """Start servers, declare queues; called once before the warm-up."""

    def variants(self) -> list[Variant]:
        """Platform path first, then baselines."""
        raise NotImplementedError

    def targets(self) -> list[Target]:
        """The issue's targets for this case."""
        return []

    def teardown(self) -> None:
        """Stop what ``setup`` started; called even when a trial failed."""


@contextmanager
def measure(clock: CpuClock, messages: int) -> Iterator[Sample]:
    """Time the block and charge its CPU; the block may append latencies or fix ``messages``."""
    sample = Sample(messages=messages, seconds=0.0, client_cpu=0.0, broker_cpu=0.0)
    client0, broker0 = clock.read()
    start = time.perf_counter()
    yield sample
    sample.seconds = time.perf_counter() - start
    client1, broker1 = clock.read()
    sample.client_cpu = client1 - client0
    sample.broker_cpu = broker1 - broker0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _spread(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


@dataclass
class CaseResult:
    """Every round's samples of a case, and what they add up to."""

    name: str
    title: str
    platform: list[str]
    samples: dict[str, list[Sample]]
    targets: list[Target]
    error: str | None = None

    def ratios(self, target: Target) -> list[float]:
        """Per-round ratio platform / baseline for ``target``'s metric."""
        pairs = zip(self.samples[target.platform], self.samples[target.baseline], strict=True)
        return [p.value(target.metric) / b.value(target.metric) for p, b in pairs]

    def verdicts(self) -> list[dict[str, Any]]:
        """Each target with its median ratio, spread and met / missed."""
        out = []
        for target in self.targets:
            spread = _spread(self.ratios(target))
            median = spread["median"]
            met = median >= target.threshold if target.op == ">=" else median <= target.threshold
            out.append(
                {
                    "label": target.label,
                    "platform": target.platform,
                    "baseline": target.baseline,
                    "metric": target.metric,
                    "op": target.op,
                    "threshold": target.threshold,
                    "ratio": spread,
                    "met": bool(met),
                }
            )
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per variant: rate, latency percentiles and CPU seconds per 1,000 messages."""
        out: dict[str, dict[str, Any]] = {}
        for name, samples in self.samples.items():
            row: dict[str, Any] = {
                "rounds": len(samples),
                "messages_per_round": samples[0].messages if samples else 0,
                "rate": _spread([s.rate for s in samples]),
                "client_cpu_per_1k": _spread([1000 * s.client_cpu / s.messages for s in samples]),
                "broker_cpu_per_1k": _spread([1000 * s.broker_cpu / s.messages for s in samples]),
            }
            if any(s.latencies for s in samples):
                row["p50_ms"] = _spread([1000 * s.value("p50") for s in samples])
                row["p99_ms"] = _spread([1000 * s.value("p99") for s in samples])
            out[name] = row
        return out


def run_case(
    case: Case, env: BenchEnv, *, pairs: int, warmup: int, quick: bool, log: Callable[[str], None]
) -> CaseResult:
    """Set up, warm up, then ``pairs`` rounds of every variant in turn (A B A B ...)."""
    samples: dict[str, list[Sample]] = {}
    result = CaseResult(case.name, case.title, [], samples, [])
    try:
        case.setup(env, quick=quick)
        variants = case.variants()
        result.platform = [v.name for v in variants if v.platform]
        result.targets = case.targets()
        for v in variants:
            samples[v.name] = []
        case.warming = True
        for _ in range(warmup):
            for v in variants:
                v.run()
        case.warming = False
        for round_no in range(pairs):
            for v in variants:
                sample = v.run()
                samples[v.name].append(sample)
                log(f"  {case.name} round {round_no + 1}/{pairs} {v.name}: {_brief(sample)}")
    except Exception as err:
        result.error = f"{type(err).__name__}: {err}"
        log(f"  {case.name} FAILED: {result.error}")
        # Keep only complete rounds so every ratio pairs samples of the same round.
        rounds = min((len(s) for s in samples.values()), default=0)
        for kept in samples.values():
            del kept[rounds:]
    finally:
        case.teardown()
    return result


def _brief(sample: Sample) -> str:
    text = f"{sample.rate:,.0f} msg/s"
    if sample.latencies:
        text += (
            f", p50 {1000 * sample.value('p50'):.2f} ms, p99 {1000 * sample.value('p99'):.2f} ms"
        )
    return text
