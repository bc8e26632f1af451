"""``newsletter bounces process PATH...``: replay bounce and complaint mail from files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from newsletter.cli.common import _context, app, err, out
from newsletter.models import utcnow
from newsletter.text import terminal_safe

bounces_app = typer.Typer(
    help="Bounces and complaints that came back after sending.", no_args_is_help=True
)
app.add_typer(bounces_app, name="bounces")

MAX_MESSAGE_BYTES = 10 * 2**20  # a bounce quoting a whole digest is far below this


def messages(paths: list[Path]) -> list[Path]:
    """``.eml`` files as given, and every message of a Maildir folder (cur/ and new/)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            boxes = [path / "cur", path / "new"] if (path / "cur").is_dir() else [path]
            found += sorted(p for box in boxes for p in box.iterdir() if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise typer.BadParameter(f"{path}: no such file or folder")
    return found


@bounces_app.command("process")
def bounces_process(
    paths: Annotated[
        list[Path], typer.Argument(help=".eml files and Maildir folders (an operator's replay).")
    ],
) -> None:
    """Read bounce and complaint messages and record what they say (a hard bounce
    suppresses, soft ones count, a complaint unsubscribes); the same message twice
    changes nothing."""
    from newsletter.bounces.process import BounceAddress, process_message

    ctx = _context()
    settings = ctx.settings
    address = (
        BounceAddress(settings.bounce_localpart, settings.bounce_domain, ctx.key)
        if settings.bounce_domain
        else None
    )
    kinds: Counter[str] = Counter()
    for path in messages(paths):
        with path.open("rb") as f:  # no more than the limit read, however large the file
            data = f.read(MAX_MESSAGE_BYTES + 1)
        if len(data) > MAX_MESSAGE_BYTES:
            err.print(terminal_safe(f"{path}: over {MAX_MESSAGE_BYTES >> 20} MB, skipped"))
            kinds["skipped"] += 1
            continue
        outcome = process_message(
            engine=ctx.engine,
            data=data,
            address=address,
            policy=settings.retry,
            now=utcnow(),
            source="file",
        )
        kinds[outcome.report.kind.value] += 1
        who = ", ".join(outcome.report.recipients) or "-"
        status = f" {outcome.report.status}" if outcome.report.status else ""
        line = f"{path.name}: {outcome.report.kind.value}{status} ({who}): {outcome.action}"
        out.print(terminal_safe(line), markup=False)
    total = sum(kinds.values())
    order = (
        "hard", "soft", "rejected", "complaint", "delayed", "auto_reply", "unrecognised", "skipped",
    )  # fmt: skip
    parts = [f"{kinds[k]} {k.replace('_', ' ')}" for k in order if kinds[k]]
    out.print(f"{total} messages: {', '.join(parts) or 'none'}", markup=False)


@bounces_app.command("serve")
def bounces_serve(
    listen: Annotated[
        str | None,
        typer.Option(
            help="lmtp://HOST:PORT or smtp://HOST:PORT (default NEWSLETTER_BOUNCE_LISTEN)."
        ),
    ] = None,
) -> None:
    """Take the bounce mailbox's mail from the MTA over LMTP (or SMTP) until SIGTERM;
    `newsletter run` does the same when NEWSLETTER_BOUNCE_LISTEN is set."""
    from newsletter import eventloop
    from newsletter.bounces.listener import serve_bounces
    from newsletter.setting_values import listen_address

    ctx = _context()
    where = listen or ctx.settings.bounce_listen
    if not where:
        raise typer.BadParameter("give --listen or set NEWSLETTER_BOUNCE_LISTEN")
    listen_address(where)  # a bad value is one line, before anything starts

    async def main() -> None:
        await serve_bounces(runtime=ctx, listen=where, stop=eventloop.stop_on_signals())

    eventloop.run(main())
