"""The project's data commands: init, ingest, classes, rescan, export, override, status.

Registered on the root group by annotator.cli. Each opens the store and calls one library function; ingest,
rescan and export import their modules inside the command, so the quick commands start fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import auth
from ..progress import describe_status, project_status
from ..store import StoreError
from .common import echo_errors, open_store


@click.command()
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


@click.command()
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
    from .. import ingest as ingest_mod
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


@click.command()
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


@click.command()
@click.pass_context
def rescan(ctx) -> None:
    """Find image files changed since ingest (size or mtime differ, then the content hash) and record them.

    Files whose size and mtime match are not read. Changed images get their new hash, so the next round
    extracts their features; missing and broken files are counted and listed on the Admin page.

    Example: annotator rescan
    """
    from ..rescan import rescan as run_rescan

    report = run_rescan(open_store(ctx), progress=True)
    click.echo(report.summary())
    echo_errors(report.errors)


@click.command()
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
    from ..export import ExportRefused, export_csv
    store = open_store(ctx)
    try:
        if str(out) == "-":
            n = export_csv(store, sys.stdout, threshold=threshold, only_kept=only_kept, fmt=fmt)
        else:
            n = export_csv(store, out, threshold=threshold, only_kept=only_kept, fmt=fmt, progress=True)
    except ExportRefused as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{n} rows written", err=True)


@click.command()
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


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx, as_json) -> None:
    """Counts, current model and worker state.

    Example: annotator status --json
    """
    store = open_store(ctx)
    out = project_status(store)
    click.echo(json.dumps(out) if as_json else "\n".join(describe_status(out)))
