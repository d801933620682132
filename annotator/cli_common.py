"""What every CLI command module shares: opening the database and reading the round settings as click errors."""
from __future__ import annotations

import click

from .round_config import BadRoundConfig, RoundConfig, load_round_config
from .store import Store, StoreError


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
