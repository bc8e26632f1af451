"""The operator's commands: ``newsletter --help`` lists them (one module per group)."""

from __future__ import annotations

import sys

import sqlalchemy as sa
import typer
from typer.exceptions import TyperException

import newsletter.cli.sources  # noqa: F401  (registers `sources list` and `sources fetch`)
from newsletter import db
from newsletter.cli import bounces, corpus, delivery, feedback, filters, people, running  # noqa: F401  (they register commands)
from newsletter.cli.common import app, err
from newsletter.errors import FilterSyntaxError, NewsletterError
from newsletter.text import terminal_safe


def main() -> None:
    """Run the CLI; every failure ends as one line on stderr and a non-zero exit."""
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # usage errors: bad option values, unknown commands
        ctx = getattr(exc, "ctx", None)
        hint = f" (try `{ctx.command_path} --help`)" if ctx is not None else ""
        if exc.format_message():  # empty when the help was shown for a bare group
            err.print(terminal_safe(f"error: {exc.format_message()}{hint}"), markup=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except NewsletterError as exc:
        err.print(terminal_safe(f"error: {exc}"), markup=False)
        syntax = exc if isinstance(exc, FilterSyntaxError) else exc.__cause__
        if isinstance(syntax, FilterSyntaxError):  # point at the mistake
            lines = (terminal_safe(line) for line in syntax.caret().split("\n"))
            err.print("  " + "\n  ".join(lines), markup=False)
        sys.exit(1)
    except sa.exc.SQLAlchemyError as exc:  # unreachable, locked, corrupt: one line
        err.print(f"error: database: {terminal_safe(db.error_reason(exc))}", markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
