"""Command line: a thin shell over the Python API (store, ingest, pipeline, worker, export, auth).

    annotator --help                 # installed by `pip install -e .`; `python -m annotator` works too
Every command opens the database given by --db (or $ANNOTATOR_DB, else the per-user data folder, see
``store.user_data_dir``), calls the same function the app and worker call, and turns library errors into a
one-line message and exit 1. Heavy modules (torch, the pipeline, streamlit) are imported inside the commands
that use them, so `status`, `users`, `classes` and `export` start fast (benchmarks/cli_startup.py).
The model commands (extract, train, train-classifier, score) live in `cli_model`, the `users` group in
`cli_users`; both are registered on the root group here.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import sys
from pathlib import Path

import click

from . import auth
from .cli_common import open_store
from .cli_duplicates import duplicates
from .cli_model import adapt, extract, score, train, train_classifier
from .cli_report import report
from .cli_users import users
from .progress import describe_status, project_status
from .store import StoreError, default_db_path, private_files


SHOWN_ERRORS = 20  # bad files listed by ingest and rescan; the Admin page lists them all


def echo_errors(errors: list[tuple[str, str]]) -> None:
    """Print the first ``SHOWN_ERRORS`` (path, reason) pairs to stderr, then how many more there are."""
    for path, reason in errors[:SHOWN_ERRORS]:
        click.echo(f"  {reason}: {path}", err=True)
    if len(errors) > SHOWN_ERRORS:
        click.echo(f"  ... and {len(errors) - SHOWN_ERRORS} more (see the Admin page)", err=True)


@click.group()
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite file; its folder holds the runtime state (default: $ANNOTATOR_DB, else "
                   "annotator.db in the per-user data folder, e.g. ~/.local/share/annotator)")
@click.option("-v", "--verbose", is_flag=True, help="log progress details")
@click.pass_context
def cli(ctx: click.Context, db: Path | None, verbose: bool) -> None:
    """Clean wrong labels with CleanNet and a live annotation loop."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    private_files()  # state, features, checkpoints and exports: readable by this user only
    ctx.obj = {"db": db or default_db_path(), "db_given": db is not None}


@cli.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the database and the lead 'admin' (unless it has a lead already).

    Example: annotator init
    """
    store = open_store(ctx)
    try:
        created = auth.ensure_admin(store)
    except ValueError as e:  # $ANNOTATOR_ADMIN_PASSWORD too short
        raise click.ClickException(f"$ANNOTATOR_ADMIN_PASSWORD: {e}") from e
    click.echo(f"database: {store.path}")
    if created and created.from_environment:
        click.echo("created lead 'admin' with the password in $ANNOTATOR_ADMIN_PASSWORD")
    elif created:
        click.echo(f"created lead 'admin' with password: {created.password}")


@cli.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), help="ROOT/<class>/<image> tree")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="CSV with path,label")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="folder the CSV paths are in")
@click.option("--classes", help="comma-separated allowed class names (others are rejected)")
@click.pass_context
def ingest(ctx, folder, csv_path, root, classes) -> None:
    """Add images from a class-folder tree or a CSV; bad files are counted and reported.

    Example: annotator ingest --csv labels.csv --root images/
    """
    if bool(folder) == bool(csv_path):
        raise click.UsageError("give exactly one of --folder DIR or --csv FILE --root DIR")
    from . import ingest as ingest_mod
    allowed = [c.strip() for c in classes.split(",")] if classes else None
    store = open_store(ctx)
    try:
        if folder:
            report = ingest_mod.ingest_folder(store, folder, allowed_classes=allowed)
        else:
            report = ingest_mod.ingest_csv(store, csv_path, root or csv_path.parent, allowed_classes=allowed)
    except (ingest_mod.BadSource, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(report.summary())
    echo_errors(report.errors)


@cli.command()
@click.option("--verify", multiple=True, help="choose a class for verification (repeatable)")
@click.option("--unverify", multiple=True, help="stop verifying a class (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def classes(ctx, verify, unverify, as_json) -> None:
    """List classes, or choose which ones annotators verify.

    Example: annotator classes --verify cat --verify dog
    """
    store = open_store(ctx)
    try:
        if verify:
            store.set_verify(list(verify), True)
        if unverify:
            store.set_verify(list(unverify), False)
    except StoreError as e:
        raise click.ClickException(str(e)) from e
    rows = store.classes()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for c in rows:
        click.echo(f"{'*' if c['verify'] else ' '} {c['name']}\t{c['n_images']}")


@cli.command()
@click.pass_context
def rescan(ctx) -> None:
    """Find image files changed since ingest (size or mtime differ, then the content hash) and record them.

    Files whose size and mtime match are not read. Changed images get their new hash, so the next round
    extracts their features; missing and broken files are counted and listed on the Admin page.

    Example: annotator rescan
    """
    from .rescan import rescan as run_rescan

    report = run_rescan(open_store(ctx), progress=True)
    click.echo(report.summary())
    echo_errors(report.errors)


@cli.command()
@click.option("--once", is_flag=True, help="run one round if one is due, then exit")
@click.option("--poll", type=float, default=2.0, show_default=True, help="seconds between checks")
@click.pass_context
def worker(ctx, once, poll) -> None:
    """Run the background worker (retrains as verdicts arrive).

    Example: annotator worker
    """
    from .worker import run_worker
    logging.getLogger().setLevel(logging.INFO)
    open_store(ctx).close()
    try:
        run_worker(ctx.obj["db"], poll=poll, once=once)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="CSV file, - = stdout")
@click.option("--threshold", type=float,
              help="score threshold in [-1, 1] (default: the lead's override, else the model's delta)")
@click.option("--only-kept", is_flag=True, help="write only the rows to keep")
@click.option("--format", "fmt", type=click.Choice(["full", "train"]), default="full", show_default=True,
              help="full: every column (README); train: path,label,weight of the rows to keep, for a training script")
@click.pass_context
def export(ctx, out, threshold, only_kept, fmt) -> None:
    """Export the cleaned dataset as CSV: final_label applies the human verdicts, then the score.

    Example: annotator export --out train.csv --format train
    """
    from .export import ExportRefused, export_csv
    store = open_store(ctx)
    try:
        if str(out) == "-":
            n = export_csv(store, sys.stdout, threshold=threshold, only_kept=only_kept, fmt=fmt)
        else:
            n = export_csv(store, out, threshold=threshold, only_kept=only_kept, fmt=fmt, progress=True)
    except ExportRefused as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{n} rows written", err=True)


@cli.command()
@click.argument("image_id", type=int)
@click.argument("verdict", type=click.Choice(["correct", "wrong", "unsure"]))
@click.option("--lead", required=True, help="the lead who decides (an active lead account)")
@click.option("--label", help="the true class (with verdict 'wrong')")
@click.option("--note", help="why, kept with the new verdict")
@click.pass_context
def override(ctx, image_id, verdict, lead, label, note) -> None:
    """Replace an image's verdict as a lead: the old one is voided in the same transaction.

    Example: annotator override 42 wrong --lead admin --label dog --note "a dog, clearly"
    """
    store = open_store(ctx)
    try:  # names compare case-insensitively: --lead Admin is admin
        vid = store.override_verdict(image_id, lead, verdict, corrected_label=label, note=note)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"image {image_id}: {verdict} by {store.get_verdict(vid)['annotator']} (verdict {vid})")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json) -> None:
    """Counts, current model and worker state.

    Example: annotator status --json
    """
    store = open_store(ctx)
    out = project_status(store)
    click.echo(json.dumps(out) if as_json else "\n".join(describe_status(out)))


@cli.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx, port) -> None:
    """Start the worker and the app on the bundled demo (what `make run` does).

    The demo's database is <clone>/data/state/annotator.db unless --db is given ($ANNOTATOR_DB is ignored
    here, so the demo never lands in your own project).

    Example: annotator demo
    """
    from .demo import DEMO_DB, run_demo
    run_demo(ctx.obj["db"] if ctx.obj["db_given"] else DEMO_DB, port=port)


def _addresses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Each value an IP address or network (10.0.0.0/8), else a usage error."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as e:
            raise click.BadParameter(f"{value!r} is not an IP address or network") from e
    return values


@cli.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address the app listens on; to serve other machines, put a TLS reverse proxy in front (README)")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, callback=_addresses,
              help="address (or network) of your reverse proxy: the client address for login throttling is then "
                   "taken from the X-Forwarded-For it sends (repeatable; default: no proxy is believed)")
@click.pass_context
def serve(ctx, port, host, trusted_proxies) -> None:
    """Start the worker and the app on your database; Ctrl+C stops both.

    Example: annotator --db ~/birds/annotator.db serve --port 8502 --trusted-proxy 127.0.0.1
    """
    from .demo import serve as serve_app
    open_store(ctx).close()
    serve_app(ctx.obj["db"], port=port, host=host, trusted_proxies=trusted_proxies)


for command in (extract, train, adapt, train_classifier, score, users, duplicates):
    cli.add_command(command)
cli.add_command(report)


def main() -> None:
    cli(prog_name="annotator")
