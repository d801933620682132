"""The long-running commands: worker, serve (the app and the worker on your database), demo.

Registered on the root group by annotator.cli; the worker and the app's launcher are imported inside them.
"""
from __future__ import annotations

import ipaddress
import logging

import click

from .common import open_store


@click.command()
@click.option("--once", is_flag=True, help="run one round if one is due, then exit")
@click.option("--poll", type=float, default=2.0, show_default=True, help="seconds between checks")
@click.pass_context
def worker(ctx, once, poll) -> None:
    """Run the background worker (retrains as verdicts arrive).

    Example: annotator worker
    """
    from ..worker import run_worker
    logging.getLogger().setLevel(logging.INFO)
    open_store(ctx).close()
    try:
        run_worker(ctx.obj["db"], poll=poll, once=once)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e


@click.command()
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx, port) -> None:
    """Start the worker and the app on the bundled demo (what `make run` does).

    The demo's database is <clone>/data/state/annotator.db unless --db is given ($ANNOTATOR_DB is ignored
    here, so the demo never lands in your own project).

    Example: annotator demo
    """
    from ..demo import DEMO_DB, run_demo
    run_demo(ctx.obj["db"] if ctx.obj["db_given"] else DEMO_DB, port=port)


def _addresses(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """Each value an IP address or network (10.0.0.0/8), else a usage error."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as e:
            raise click.BadParameter(f"{value!r} is not an IP address or network") from e
    return values


@click.command()
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
    from ..server import serve as serve_app
    open_store(ctx).close()
    serve_app(ctx.obj["db"], port=port, host=host, trusted_proxies=trusted_proxies)
