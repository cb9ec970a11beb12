"""Which of Celery's integration tests run here, and how Celery's own test code is fetched.

Celery's test code is not copied into this repository: the sdist of the installed
Celery version is downloaded from PyPI (``pip download``) into ``.cache/`` (git-ignored)
and its ``t/`` directory extracted next to it.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

__all__ = ["DIFFERENCES", "SELECTED", "fetch_suite"]

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "celery-upstream"

_TASKS = "t/integration/test_tasks.py::test_tasks"
_CANVAS = "t/integration/test_canvas.py"

#: Celery's cases of the task contract: failing, retrying, link errors, expiry, headers,
#: stamps, and errbacks of chains, groups and chords.
SELECTED: tuple[str, ...] = (
    "t/integration/test_tasks.py::test_class_based_tasks",
    *(
        f"{_TASKS}::{name}"
        for name in (
            "test_simple_call",
            "test_basic_task",
            "test_fail",
            "test_fail_with_unpickleable_exception",
            "test_wrong_arguments",
            "test_expired",
            "test_revoked",
            "test_eta",
            "test_reject_without_requeue_stores_failure",
            "test_reject_with_requeue_redelivers_and_succeeds",
            "test_retry",
            "test_retry_switches_from_kwargs_to_args",
            "test_retry_switches_from_args_to_kwargs",
            "test_retry_with_unpickleable_exception",
            "test_task_retried_once",
            "test_task_retried_once_with_expires",
            "test_task_retried_priority",
            "test_task_retried_headers",
            "test_properties",
        )
    ),
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_retry_preserves_ignore_result_false",
    "t/integration/test_tasks.py::test_task_redis_result_backend::test_retry_preserves_ignore_result_true",
    f"{_CANVAS}::test_link_error",
    f"{_CANVAS}::test_chain::test_chain_on_error",
    f"{_CANVAS}::test_group::test_errback_called_by_group_fail_first",
    f"{_CANVAS}::test_group::test_errback_called_by_group_fail_last",
    f"{_CANVAS}::test_group::test_errback_called_by_group_fail_multiple",
    f"{_CANVAS}::test_chord::test_chord_on_error",
    f"{_CANVAS}::test_chord::test_error_propagates_from_chord2",
    f"{_CANVAS}::test_chord::test_error_propagates_to_chord_from_simple",
    f"{_CANVAS}::test_chord::test_immutable_errback_called_by_chord_from_simple",
    f"{_CANVAS}::test_chord::test_mutable_errback_called_by_chord_from_simple",
    f"{_CANVAS}::test_stamping_mechanism::test_stamps_remain_on_task_retry",
    f"{_CANVAS}::test_stamping_mechanism::test_err_linking_stamped_sig",
)

#: Node ids where the platform differs from Celery on purpose, and why (marked xfail, strict).
DIFFERENCES: dict[str, str] = {}


def fetch_suite(cache: Path = CACHE) -> Path:
    """Download the installed Celery's sdist once and return the directory holding its ``t/``."""
    celery_version = version("celery")
    target = cache / f"celery-{celery_version}"
    if (target / "t" / "integration" / "conftest.py").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--no-binary", ":all:", f"celery=={celery_version}", "--dest", str(cache),
        ],
        check=True, timeout=300,
    )  # fmt: skip
    [sdist] = cache.glob(f"celery-{celery_version}.tar.gz")
    prefix = f"celery-{celery_version}/"
    with tarfile.open(sdist) as archive:
        # Only the tests and their pytest settings: the installed Celery is the one under test.
        members = [
            m
            for m in archive.getmembers()
            if m.name.startswith(prefix + "t/") or m.name == prefix + "pyproject.toml"
        ]
        archive.extractall(cache, members=members, filter="data")
    return target
