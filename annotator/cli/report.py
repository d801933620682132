"""`annotator report`: where the project stands (``annotator.estimates``) as text, JSON or one HTML file."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .common import open_store


@click.command()
@click.option("--json", "as_json", is_flag=True, help="every figure as JSON (what the dashboard shows)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="write a self-contained HTML report here (no network needed to open it)")
@click.pass_context
def report(ctx, as_json, out) -> None:
    """Where the project stands: wrong labels estimated with 95 % intervals, fixed by verdicts, left, and what
    the export drops and relabels; the figures of the dashboard's "Where we stand".

    Example: annotator report --out report.html
    """
    from ..estimates import standing
    from ..export import ExportRefused
    from ..report import stopping_rows, summary_rows, write_html
    store = open_store(ctx)
    s = standing(store)
    if out is not None:
        try:
            write_html(s, out, db=Path(store.path))
        except (ExportRefused, OSError) as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"report written to {out}", err=as_json)
    if as_json:
        click.echo(json.dumps(s))
    elif out is None:
        for row in summary_rows(s):
            interval = row["interval (95 %)"]
            shown = interval if interval == "exact" else f"95 %: {interval}"
            click.echo(f"{row['figure']}: {row['estimate']} ({shown}); {row['how']}")
        for row in stopping_rows(s["stopping"]):
            click.echo(f"Stopping signal, {row['class']}: {row['signal']} ({row['verdicts']} verdicts; without the "
                       f"newest {row['newest left out']}, flags moved: {row['flags moved']})")
