"""The console's login: one user and password from the environment, checked in constant time."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from kitty_tasks.ops.flower import AuthError, check_credential

__all__ = ["PASSWORD_ENV", "USER_ENV", "Credentials", "credentials_from"]

USER_ENV = "KITTY_CONSOLE_USER"
PASSWORD_ENV = "KITTY_CONSOLE_PASSWORD"  # noqa: S105 - the variable's name, not a password


@dataclass(frozen=True)
class Credentials:
    """The one login the console accepts."""

    user: str
    password: str

    def accepts(self, authorization: str | None) -> bool:
        """True when an ``Authorization: Basic ...`` header carries this user and password."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "basic" or not token:
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = given.partition(":")
        # Both compared, always: the time taken says nothing about which part was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and user_ok and password_ok


def credentials_from(env: Mapping[str, str]) -> Credentials:
    """The console's login from ``env``; ``AuthError`` when missing, blank or a placeholder."""
    user = env.get(USER_ENV, "")
    password = env.get(PASSWORD_ENV, "")
    if not user.strip() or not password:
        raise AuthError(
            f"the console needs a login: set {USER_ENV} and {PASSWORD_ENV} "
            "(there is no default user or password)"
        )
    if ":" in user:
        raise AuthError(f"{USER_ENV} must not contain ':' (basic auth splits on it)")
    check_credential(user, password, PASSWORD_ENV)
    return Credentials(user, password)
