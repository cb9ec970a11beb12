"""The layering: the core and the thin layers load without Celery; lint-imports guards it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _loaded_after(statement: str) -> set[str]:
    code = f"{statement}; import sys; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import rpc, events", "import kitty_tasks.core"])
def test_the_core_and_the_thin_layers_load_without_celery(statement: str) -> None:
    # When a service imports only the event bus and RPC (or the core)
    loaded = _loaded_after(statement)
    # Then neither Celery nor Flower is loaded
    assert not {"celery", "flower"} & loaded


def test_the_public_face_still_builds_the_app_when_asked() -> None:
    loaded = _loaded_after("from kitty_tasks import TaskQueue, app")
    assert "celery" in loaded


def test_old_module_paths_are_the_new_modules() -> None:
    import kitty_tasks.topology  # type: ignore[import-not-found]

    import kitty_tasks.core.topology

    assert kitty_tasks.topology is kitty_tasks.core.topology


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_lint_imports_fails_when_the_core_imports_celery(tmp_path: Path) -> None:
    # Given a copy of the project whose core imports Celery
    for name in ("kitty_tasks", "events", "rpc"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    settings = tmp_path / "kitty_tasks" / "core" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport celery  # noqa\n")
    # When the import contracts are checked
    result = subprocess.run(
        [str(LINT_IMPORTS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    # Then the check fails and names the broken contract and the import
    assert result.returncode == 1, result.stdout + result.stderr
    assert "The core imports neither Celery nor the layers above it BROKEN" in result.stdout
    assert "kitty_tasks.core.settings -> celery" in result.stdout


def test_a_process_registry_has_no_broker_gauges() -> None:
    # The exporter's gauges are built per scrape, never registered in a worker's process.
    import kitty_tasks.core.metrics  # noqa: F401

    exposed = generate_latest(REGISTRY).decode()
    assert "kitty_queue_depth" not in exposed
    assert "kitty_dlq_depth" not in exposed
