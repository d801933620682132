"""Command line: a thin shell over the Python API (store, ingest, pipeline, worker, export, auth).

    annotator --help                 # installed by `pip install -e .`; `python -m annotator` works too
Every command opens the database given by --db (or $ANNOTATOR_DB, else the per-user data folder, see
``store.user_data_dir``), calls the same function the app and worker call, and turns library errors into a
one-line message and exit 1. Heavy modules (torch, the pipeline, streamlit) are imported inside the commands
that use them, so `status`, `users`, `classes` and `export` start fast (benchmarks/cli_startup.py).

The root group `cli` is here; its commands live in `project` (init, ingest, classes, rescan, export, override,
status), `processes` (worker, serve, demo), `model` (extract, train, adapt, train-classifier, score), `users`,
`duplicates` and `report`; `common` holds what they share.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from ..store import default_db_path, private_files
from .duplicates import duplicates
from .model import adapt, extract, score, train, train_classifier
from .processes import demo, serve, worker
from .project import classes, export, ingest, init, override, rescan, status
from .report import report
from .users import users


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


for command in (init, ingest, classes, rescan, export, override, status, worker, serve, demo,
                extract, train, adapt, train_classifier, score, users, duplicates, report):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="annotator")
