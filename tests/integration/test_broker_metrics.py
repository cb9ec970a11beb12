"""Alert rules read broker metrics that RabbitMQ's prometheus plugin really exports."""

from __future__ import annotations

import os
import re
import urllib.parse

import pytest
import requests

from tests.compose_support import PROMETHEUS_CONFIG, alert_rules, load, metric_names

pytestmark = pytest.mark.rabbitmq


def _plugin_url() -> str:
    """The prometheus plugin on the management API's host."""
    management = os.environ.get("KITTY_MANAGEMENT_URL", "http://localhost:15672")
    parsed = urllib.parse.urlsplit(management)
    return f"{parsed.scheme}://{parsed.hostname}:15692"


PROMETHEUS_URL = os.environ.get("KITTY_BROKER_PROMETHEUS_URL") or _plugin_url()


def scrape(path: str, params: dict[str, list[str]] | None = None) -> set[str]:
    """Series names on one of the plugin's endpoints."""
    try:
        response = requests.get(f"{PROMETHEUS_URL}{path}", params=params, timeout=10)
    except requests.ConnectionError as err:
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ's prometheus plugin is not reachable at {PROMETHEUS_URL}")
        pytest.skip(f"RabbitMQ's prometheus plugin is not reachable: {err}")
    response.raise_for_status()
    return set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", response.text, flags=re.MULTILINE))


def test_every_broker_metric_in_the_alerts_is_exported(amqp_url: str) -> None:
    # Given the series the plugin serves the way prometheus.yml scrapes it
    jobs = {job["job_name"]: job for job in load(PROMETHEUS_CONFIG)["scrape_configs"]}
    exported = scrape("/metrics")
    detailed = jobs["rabbitmq-queues"]
    exported |= scrape(detailed["metrics_path"], detailed["params"])
    # When the alert rules are read
    wanted = {
        name
        for rule in alert_rules()
        for name in metric_names(rule["expr"])
        if name.startswith("rabbitmq_")
    }
    # Then every broker metric they use is really there
    assert wanted
    assert wanted <= exported, f"not exported by the broker: {sorted(wanted - exported)}"


def test_detailed_queue_metrics_carry_the_queue_label(amqp_url: str) -> None:
    # The alerts group by (vhost, queue): the test run's vhost shows its task queues.
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(amqp_url).path[1:])
    response = requests.get(
        f"{PROMETHEUS_URL}/metrics/detailed",
        params={"family": ["queue_coarse_metrics", "queue_consumer_count"], "vhost": vhost},
        timeout=10,
    )
    response.raise_for_status()
    assert f'rabbitmq_detailed_queue_messages{{vhost="{vhost}",queue="research.tasks"}}' in (
        response.text
    )
    assert "rabbitmq_detailed_queue_consumers{" in response.text
