"""Reading the compose and Prometheus files for tests: YAML, mounts, variables, metric names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILES = (COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "cluster.yml")
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus/prometheus.yml"
ALERTS = COMPOSE_DIR / "prometheus/alerts.yml"

#: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?P<op>:?[-?])?(?P<arg>[^}]*)\}")

_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "offset"}
_PROMQL_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def load(path: Path) -> Any:
    """Parse one YAML file."""
    return yaml.safe_load(path.read_text())


def compose_variables(path: Path) -> list[re.Match[str]]:
    """Every ``${...}`` interpolation in a compose file."""
    return list(VARIABLE.finditer(path.read_text()))


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts (named volumes left out)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def env_example_variables() -> dict[str, str]:
    """The variables ``compose/.env.example`` documents, with their example values."""
    found = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            found[name.strip()] = value.strip()
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        following = text[match.end() :].lstrip()
        if following.startswith("(") or match.group() in _PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d*e\d+", match.group()) or match.group() in {"e", "Inf", "NaN"}:
            continue
        names.add(match.group())
    return names


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of ``alerts.yml``."""
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def project_metric_names() -> set[str]:
    """Every series name the project's own metrics can expose (``kitty_*``)."""
    from kitty_tasks.core import metrics
    from kitty_tasks.ops.exporter import FAMILIES

    wrappers = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    names = set(FAMILIES)  # the exporter's gauges have no suffixes
    for wrapper in wrappers:
        for family in wrapper.describe():
            # A counter or histogram is only ever exposed with its suffixes.
            suffixes = _PROMQL_SUFFIXES.get(family.type, ("",))
            names.update(family.name + suffix for suffix in suffixes)
    return names
