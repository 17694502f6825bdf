"""`medkit list KIND [PATTERN]` and `medkit plugins`: what the registries hold."""

from __future__ import annotations

from typing import Annotated

import typer

from medkit.cli._options import JsonOpt
from medkit.console import out, print_json, print_table

__all__ = ["list_entries", "plugins"]


def _flags_text(flags: dict) -> str:
    return ", ".join(k if v is True else f"{k}={v}" for k, v in sorted(flags.items()) if v not in (False, None))


def list_entries(
    kind: Annotated[
        str | None,
        typer.Argument(help="models, losses, optimizers, schedulers, metrics, tasks, competitions or readers."),
    ] = None,
    pattern: Annotated[
        str | None, typer.Argument(help="Shell-style pattern, e.g. 'efficientnet*' or 'timm/convnext*'.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List registered names of a kind (or every kind with its count), with description and flags."""
    from medkit.registries import ALL, by_kind

    if kind is None:
        rows = [
            {"kind": k, "count": len(reg), "prefixes": [p.prefix + "/" for p in reg.prefixes]} for k, reg in ALL.items()
        ]
        if json_out:
            print_json(rows)
            return
        from rich.table import Table

        table = Table(title="medkit registries")
        table.add_column("kind")
        table.add_column("entries", justify="right")
        table.add_column("prefixes")
        for r in rows:
            table.add_row(r["kind"], str(r["count"]), " ".join(r["prefixes"]))
        print_table(table)
        return
    reg = by_kind(kind)
    entries = reg.entries(pattern)
    if json_out:
        print_json(
            [
                {"name": e.name, "description": e.description, "flags": dict(e.flags), "source": e.source}
                for e in entries
            ]
        )
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{reg.kind}" + (f" matching '{pattern}'" if pattern else ""))
    table.add_column("name", no_wrap=True)
    table.add_column("description", ratio=3, min_width=30)
    table.add_column("flags", ratio=2)
    table.add_column("source")
    for e in entries:
        # Descriptions are plain text (``pip install 'medkit[mlflow]'`` must not be read as markup).
        table.add_row(escape(e.name), escape(e.description), escape(_flags_text(dict(e.flags))), e.source)
    print_table(table)
    if not pattern:
        for p in reg.prefixes:
            line = escape(f"{p.prefix}/<name>: {p.description} (medkit list {reg.kind} '{p.prefix}/*')")
            out.print(f"[dim]{line}[/dim]")


def plugins(json_out: JsonOpt = False) -> None:
    """List third-party plugins (entry points in the medkit.<kind> groups) and whether each is usable."""
    from medkit.registries import ALL
    from medkit.registry import plugins_disabled

    rows = [
        {"kind": kind, "name": name, "target": target, "status": status}
        for kind, reg in ALL.items()
        for name, target, status in reg.plugins()
    ]
    if json_out:
        print_json({"disabled": plugins_disabled(), "plugins": rows})
        return
    if plugins_disabled():
        out.print("plugins are disabled (MEDKIT_DISABLE_PLUGINS=1)")
        return
    if not rows:
        out.print("no plugins installed (entry point groups: " + ", ".join(f"medkit.{k}" for k in ALL) + ")")
        return
    from rich.table import Table

    table = Table(title="medkit plugins")
    for col in ("kind", "name", "target", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["target"], r["status"])
    print_table(table)
