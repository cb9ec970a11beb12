"""KITTY_TOPOLOGY_PROFILE: read from the environment, refused clearly when unknown."""

from __future__ import annotations

import pytest

from kitty_tasks.core.errors import ConfigurationError
from kitty_tasks.core.settings import Settings, TopologyProfile, topology_profile


def test_the_profile_defaults_to_classic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KITTY_TOPOLOGY_PROFILE", raising=False)
    assert topology_profile() is TopologyProfile.CLASSIC


def test_the_quorum_profile_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITTY_TOPOLOGY_PROFILE", "quorum")
    assert topology_profile() is TopologyProfile.QUORUM
    assert Settings().topology_profile is TopologyProfile.QUORUM


def test_an_unknown_profile_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITTY_TOPOLOGY_PROFILE", "mirrored")
    with pytest.raises(ConfigurationError, match="must be one of classic, quorum, not 'mirrored'"):
        topology_profile()
