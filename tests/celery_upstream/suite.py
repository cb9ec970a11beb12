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

#: Celery's cases of the task contract: failing, retrying, link errors, expiry, headers.
SELECTED: tuple[str, ...] = (
    f"{_TASKS}::test_fail",
    f"{_TASKS}::test_wrong_arguments",
    f"{_TASKS}::test_expired",
    f"{_TASKS}::test_revoked",
    f"{_TASKS}::test_retry",
    f"{_TASKS}::test_retry_switches_from_kwargs_to_args",
    f"{_TASKS}::test_retry_switches_from_args_to_kwargs",
    f"{_TASKS}::test_task_retried_once",
    f"{_TASKS}::test_task_retried_once_with_expires",
    f"{_TASKS}::test_task_retried_priority",
    f"{_TASKS}::test_task_retried_headers",
    f"{_TASKS}::test_properties",
    f"{_CANVAS}::test_link_error",
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
