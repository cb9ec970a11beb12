"""rpc:// selects the platform's RPC result backend; other backends pass through."""

from __future__ import annotations

from kitty_tasks.runtime.application import app
from kitty_tasks.runtime.backend import RPC_BACKEND, KittyRPCBackend, result_backend_setting


def test_rpc_url_selects_the_kitty_backend() -> None:
    assert result_backend_setting("rpc://") == RPC_BACKEND
    assert result_backend_setting("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_the_app_uses_it_by_default() -> None:
    # Given the default settings (KITTY_RESULT_BACKEND=rpc://), the app's backend is ours
    assert isinstance(app.backend, KittyRPCBackend)
