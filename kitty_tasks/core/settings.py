"""Platform settings, read once from the environment (pydantic-settings)."""

from __future__ import annotations

from enum import Enum
from functools import lru_cache

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from kitty_tasks.core.errors import ConfigurationError

__all__ = [
    "DEFAULT_RABBITMQ_URL",
    "DEFAULT_RESULT_BACKEND",
    "Settings",
    "TopologyProfile",
    "get_settings",
    "topology_profile",
]

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@localhost:5672//"
#: An SQLite file in the working directory, read and written by every process there.
DEFAULT_RESULT_BACKEND = "db+sqlite:///.kitty-results.sqlite3"
_CONFIG = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)


class TopologyProfile(str, Enum):
    """Which queue types the topology uses: classic (any broker) or quorum (RabbitMQ 4.0+)."""

    CLASSIC = "classic"
    QUORUM = "quorum"


class Settings(BaseSettings):
    """Every environment variable the platform reads; the README's table lists them."""

    model_config = _CONFIG

    rabbitmq_url: str = Field(DEFAULT_RABBITMQ_URL, alias="RABBITMQ_URL")
    result_backend: str = Field(DEFAULT_RESULT_BACKEND, alias="KITTY_RESULT_BACKEND")
    #: Seconds a stored result is kept; 0 keeps results for ever.
    result_expires: int = Field(86400, ge=0, alias="KITTY_RESULT_EXPIRES")
    max_message_bytes: int = Field(1024 * 1024, gt=0, alias="KITTY_MAX_MESSAGE_BYTES")
    max_retries: int = Field(3, ge=0, alias="KITTY_MAX_RETRIES")
    retry_backoff_base: float = Field(1.0, gt=0, alias="KITTY_RETRY_BACKOFF_BASE")
    retry_backoff_max: float = Field(7200.0, gt=0, alias="KITTY_RETRY_BACKOFF_MAX")
    publish_timeout: float = Field(10.0, gt=0, alias="KITTY_PUBLISH_TIMEOUT")
    prefetch_multiplier: int = Field(1, ge=1, alias="KITTY_PREFETCH_MULTIPLIER")
    task_time_limit: float | None = Field(None, gt=0, alias="KITTY_TASK_TIME_LIMIT")
    #: The broker's consumer_timeout in ms (RabbitMQ's default, 30 min; 0 = disabled there).
    broker_consumer_timeout: int = Field(1_800_000, ge=0, alias="KITTY_BROKER_CONSUMER_TIMEOUT")
    management_url: str = Field("http://localhost:15672", alias="KITTY_MANAGEMENT_URL")
    metrics_port: int | None = Field(None, ge=0, le=65535, alias="KITTY_METRICS_PORT")
    #: Publish <domain>.task.completed|failed|dead_lettered when a worker's task ends.
    task_events: bool = Field(True, alias="KITTY_TASK_EVENTS")
    #: Longest a finished task waits for its lifecycle event's confirm before it is acked anyway.
    task_events_timeout: float = Field(5.0, gt=0, alias="KITTY_TASK_EVENTS_TIMEOUT")
    #: Celery's INFO line per task received and succeeded (off: events and metrics say it).
    log_tasks: bool = Field(False, alias="KITTY_LOG_TASKS")
    idempotency_db: str = Field(".kitty-idempotency.sqlite3", alias="KITTY_IDEMPOTENCY_DB")
    topology_profile: TopologyProfile = Field(
        TopologyProfile.CLASSIC, alias="KITTY_TOPOLOGY_PROFILE"
    )


class _ProfileOnly(BaseSettings):
    """The profile alone: the topology is built at import, before other settings matter."""

    model_config = _CONFIG
    topology_profile: TopologyProfile = Field(
        TopologyProfile.CLASSIC, alias="KITTY_TOPOLOGY_PROFILE"
    )


def topology_profile() -> TopologyProfile:
    """KITTY_TOPOLOGY_PROFILE from the environment (or .env); a clear error when invalid."""
    try:
        return _ProfileOnly().topology_profile
    except ValidationError as err:
        choices = ", ".join(p.value for p in TopologyProfile)
        given = err.errors()[0].get("input")
        raise ConfigurationError(
            f"KITTY_TOPOLOGY_PROFILE must be one of {choices}, not {given!r}"
        ) from err


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (read once; tests build their own ``Settings``)."""
    return Settings()
