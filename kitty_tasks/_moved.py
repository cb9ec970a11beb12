"""Old module paths (before the core/runtime/tasks/ops layout) as aliases of the new modules.

Code written against ``kitty_tasks.topology`` or ``kitty_tasks.research`` keeps
working: importing an old path returns the module at its new path (the same object).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["MOVED", "install"]

#: Old path -> new path, for every module the layout moved.
MOVED = {
    **{
        f"kitty_tasks.{name}": f"kitty_tasks.core.{name}"
        for name in (
            "settings",
            "errors",
            "topology",
            "publisher",
            "metrics",
            "shutdown",
            "management",
        )
    },
    "kitty_tasks.retry": "kitty_tasks.core.failure",
    "kitty_tasks.deadletter": "kitty_tasks.core.failure",
    "kitty_tasks.broker": "kitty_tasks.core.declarer",
    **{
        f"kitty_tasks.{name}": f"kitty_tasks.runtime.{name}"
        for name in ("application", "task", "worker", "backend", "routing", "signals", "taskqueue")
    },
    **{
        f"kitty_tasks.{name}": f"kitty_tasks.tasks.{name}"
        for name in ("research", "cad", "brain", "corpus")
    },
    **{
        f"kitty_tasks.{name}": f"kitty_tasks.ops.{name}"
        for name in (
            "cli",
            "cli_dlq",
            "cli_format",
            "cli_ops",
            "cli_wire",
            "demo",
            "dlq",
            "replay",
            "health",
            "exporter",
            "flower",
            "queues",
        )
    },
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; undo the import system's overwrite of the module's own spec."""
        module.__spec__ = importlib.util.spec_from_file_location(module.__name__, module.__file__)


def install() -> None:
    """Let the old paths import (once per process)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
