"""`annotator users ...`: add users, list them, set a password, end their sessions.

Registered on the root group by annotator.cli; imports nothing heavy, so these commands start fast.
"""
from __future__ import annotations

import click

from .. import auth
from .common import open_store
from ..store import StoreError


@click.group()
def users() -> None:
    """Manage users (annotators and leads)."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["annotator", "lead"]), required=True)
@click.option("--password", help="default: generated and printed once")
@click.pass_context
def users_add(ctx, name, role, password) -> None:
    """Add a user.

    Example: annotator users add alice --role annotator
    """
    store = open_store(ctx)
    try:
        pw = auth.add_user(store, name, role, password)
    except (StoreError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"added {role} {auth.normalise_name(name)!r}" + ("" if password else f" with password: {pw}"))


@users.command("list")
@click.pass_context
def users_list(ctx) -> None:
    """List users and roles."""
    for u in open_store(ctx).list_users():
        click.echo(f"{u['name']}\t{u['role']}\t{'active' if u['active'] else 'disabled'}")


@users.command("password")
@click.argument("name")
@click.option("--password", help=f"the new password (at least {auth.MIN_PASSWORD} characters); default: generated")
@click.pass_context
def users_password(ctx, name, password) -> None:
    """Set a user's password; every session of the user ends.

    Example: annotator users password alice
    """
    store = open_store(ctx)
    user = store.get_user(name)
    if user is None:
        raise click.ClickException(f"unknown user {name!r}")
    try:
        pw = auth.set_password(store, user["name"], password)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"password of {user['name']!r} changed" + ("" if password else f" to: {pw}"))


@users.command("signout")
@click.argument("name")
@click.pass_context
def users_signout(ctx, name) -> None:
    """End every open session of a user (sign out everywhere).

    Example: annotator users signout alice
    """
    store = open_store(ctx)
    user = store.get_user(name)
    if user is None:
        raise click.ClickException(f"unknown user {name!r}")
    click.echo(f"ended {store.end_sessions(user['name'])} session(s) of {user['name']!r}")
