"""Serving: `churnml serve` and the service's named users."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from churnml.cli.common import app, console, err_console, fail, load_settings, log
from churnml.config import Settings


@app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option(min=1, max=65535)] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
    model_tag: Annotated[
        str | None,
        typer.Option("--model-tag", help="Serve this BentoML model tag instead of the registry alias."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Import models:/churn@champion into the BentoML store and start the prediction service."""
    settings = load_settings()
    env = _serving_env(settings)
    os.environ.update(env)
    from churnml.service import import_registered_model

    try:
        tag = model_tag or import_registered_model(settings)
    except (RuntimeError, LookupError, ValueError) as err:
        raise fail(str(err)) from None
    if settings.api_token is not None and len(settings.api_token) < 24:
        log.warning("CHURNML_API_TOKEN has %d characters: use a long random one (`churnml users add` "
                    "makes 43-character tokens)", len(settings.api_token))  # fmt: skip
    env |= {"CHURNML_BENTO_MODEL": tag, "CHURNML_SERVE_WORKERS": str(workers)}
    console.print(f"serving {tag} on http://{host}:{port} (pages: http://{host}:{port}/ui/)", highlight=False)
    sys.stdout.flush()
    # the service module is in the installed package: no checkout needed, CHURNML_HOME as working dir
    argv = [sys.executable, "-m", "bentoml", "serve", "churnml.service.bento:ChurnService", "--host", host,
            "--port", str(port), "--working-dir", str(settings.home)]  # fmt: skip
    os.execve(sys.executable, argv, {**os.environ, **env})


def _serving_env(settings: Settings) -> dict[str, str]:
    """Environment of the service process: the BentoML store and the workspace under CHURNML_HOME."""
    return {
        "BENTOML_HOME": os.environ.get("BENTOML_HOME", str(settings.bentoml_home)),
        "CHURNML_HOME": str(settings.home),
        "BENTOML_DO_NOT_TRACK": "True",
    }


users_app = typer.Typer(help="Named users of the service and its pages, each with their own token.",
                        no_args_is_help=True)  # fmt: skip


app.add_typer(users_app, name="users")


def _user_store():  # noqa: ANN202
    from churnml.service.users import UserStore

    return UserStore(load_settings().users_path)


@users_app.command("add")
def users_add_command(
    name: Annotated[str, typer.Argument(help="Who the token is for (letters, digits, . _ @ -).")],
    replace: Annotated[bool, typer.Option(help="Issue a new token to an existing user.")] = False,
) -> None:
    """Create a user and print their token (shown once; only its SHA-256 is stored)."""
    store = _user_store()
    try:
        token = store.add(name, replace=replace)
    except ValueError as err:
        raise fail(str(err)) from None
    err_console.print(f"user {name} added to {store.path}; give them this token (it is not shown again):",
                      highlight=False)  # fmt: skip
    console.print(token, highlight=False, soft_wrap=True)


@users_app.command("list")
def users_list_command() -> None:
    """The users and when their tokens were issued."""
    for user in _user_store().users():
        console.print(f"{user.name}  {user.created}", highlight=False)


@users_app.command("remove")
def users_remove_command(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a user: their token and page sessions stop working at once."""
    if not _user_store().remove(name):
        raise fail(f"no user {name!r}")
    console.print(f"removed user {name}", highlight=False)
