"""What every CLI command module shares: opening the database, reading the round settings as click errors,
listing bad files."""
from __future__ import annotations

import click

from ..round_config import BadRoundConfig, RoundConfig, load_round_config
from ..store import Store, StoreError


def open_store(ctx: click.Context) -> Store:
    """The database named by the root command's --db; ClickException when it cannot be opened."""
    try:
        return Store(ctx.obj["db"])
    except (StoreError, OSError) as e:
        raise click.ClickException(f"cannot open database {ctx.obj['db']}: {e}") from e


def round_config(store: Store, **overrides) -> RoundConfig:
    """The stored round settings plus the CLI flags that were given (see round_config.load_round_config)."""
    try:
        return load_round_config(store, **overrides)
    except BadRoundConfig as e:
        raise click.ClickException(f"bad round setting: {e}") from e


SHOWN_ERRORS = 20  # bad files listed by ingest and rescan; the Admin page lists them all


def echo_errors(errors: list[tuple[str, str]]) -> None:
    """Print the first ``SHOWN_ERRORS`` (path, reason) pairs to stderr, then how many more there are."""
    for path, reason in errors[:SHOWN_ERRORS]:
        click.echo(f"  {reason}: {path}", err=True)
    if len(errors) > SHOWN_ERRORS:
        click.echo(f"  ... and {len(errors) - SHOWN_ERRORS} more (see the Admin page)", err=True)
