"""What every command shares: the app and its groups, the consoles, the runtime, helpers.

Errors print as one line on stderr with a non-zero exit code; list commands
take ``--json`` for scripts; long steps show a progress bar on a terminal and
stay quiet in a pipe.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlmodel import select

from newsletter import db
from newsletter.config import load_settings
from newsletter.errors import NewsletterError, SubscriberError
from newsletter.models import Subscriber
from newsletter.runtime import Runtime, build_runtime
from newsletter.text import json_safe

if TYPE_CHECKING:
    pass
app = typer.Typer(
    help="Emails researchers the new papers they care about.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(
    help="Database schema: apply migrations, show the revision.", no_args_is_help=True
)
papers_app = typer.Typer(help="Papers stored from the corpus.", no_args_is_help=True)
subs_app = typer.Typer(help="Subscribers and their topic filters.", no_args_is_help=True)
deliveries_app = typer.Typer(help="The sent-ledger: list digests, requeue failures.")
filters_app = typer.Typer(
    help="Topic filters: try one against the stored papers.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(papers_app, name="papers")
app.add_typer(subs_app, name="subscribers")
app.add_typer(filters_app, name="filters")
app.add_typer(deliveries_app, name="deliveries")

# No markup: what is printed holds stored data and paths, and rich would read a title's
# "[link=http://...]" as a clickable link or a style; nothing here prints markup.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


class SchemaOutOfDate(NewsletterError):
    pass


def _context(*, check_schema: bool = True) -> Runtime:
    """The runtime every command works with (settings, engine, key, links)."""
    runtime = build_runtime(settings=load_settings())
    if check_schema and not db.is_up_to_date(engine=runtime.engine):
        raise SchemaOutOfDate("the database schema is not up to date: run `newsletter db upgrade`")
    return runtime


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _print_json(data: Any) -> None:
    sys.stdout.write(json_safe(json.dumps(data, indent=2, default=str, ensure_ascii=False)) + "\n")


def _parse_day(value: str | None, *, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"expected a date YYYY-MM-DD, got {value!r}", param_hint=option
        ) from None


def _subscriber_id(ctx: Runtime, email: str) -> int:
    from newsletter.subscribers import normalize_email

    address = normalize_email(email)
    with db.session_scope(engine=ctx.engine) as session:
        sid = session.exec(select(Subscriber.id).where(Subscriber.email == address)).first()
    if sid is None:
        raise SubscriberError(f"no subscriber {address}", field="email")
    return sid
