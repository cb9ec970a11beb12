"""Helpers the CLI modules share: JSON options in; tables, JSON and readable ages out."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from kitty_tasks.core.management import ManagementClient

__all__ = [
    "echo_json",
    "format_age",
    "json_list",
    "json_object",
    "management_client",
    "report_differences",
    "table",
    "truncate",
    "write_output",
]


def json_object(text: str, option: str) -> dict[str, Any]:
    """The JSON object given to ``option``; a usage error (exit 2) when it is not one."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint=option) from err
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return value


def json_list(text: str, option: str) -> list[Any]:
    """The JSON list given to ``option``; a usage error (exit 2) when it is not one."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise click.BadParameter(f"not JSON: {err}", param_hint=option) from err
    if not isinstance(value, list):
        raise click.BadParameter("must be a JSON list", param_hint=option)
    return value


def management_client(ctx: click.Context) -> ManagementClient:
    """Management API client for the command's broker (same user and password)."""
    return ManagementClient.from_urls(ctx.obj["management_url"], ctx.obj["url"])


def write_output(text: str, output: Path) -> None:
    """Write ``text`` to ``output`` (``-``: standard output) and say where it went."""
    if str(output) == "-":
        click.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    click.echo(f"wrote {output}")


def report_differences(
    differences: Sequence[Any], *, vhost: str, as_json: bool, matched: str
) -> None:
    """Print what ``verify`` found (or ``matched``), then exit 1 if anything differs."""
    if as_json:
        click.echo(json.dumps([d.__dict__ for d in differences], indent=2))
    elif differences:
        for difference in differences:
            click.echo(str(difference))
        click.echo(f"{len(differences)} difference(s) in vhost {vhost!r}", err=True)
    else:
        click.echo(matched)
    sys.exit(1 if differences else 0)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under upper-case headers, columns padded to their widest cell."""
    cells = [
        [str(h).upper() for h in headers],
        *[["-" if c is None else str(c) for c in r] for r in rows],
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m03s``, ``2h10m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def truncate(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON (datetimes and other objects as strings)."""
    click.echo(json.dumps(value, indent=2, default=str))
