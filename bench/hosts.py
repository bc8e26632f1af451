"""Benchmark: delivery throughput across hosts sharing one PostgreSQL queue.

Each host is a network namespace (tests/netns.py: its own loopback, an address on a
veth pair to this machine) running one `newsletter worker`; PostgreSQL is reached
through socat on the host's link (it listens on this machine's loopback only) and
Postfix's smtp-sink listens on every address of this machine. The same N digests are
planned afresh for each run and delivered by 1 host, then by 2: the figure is digests
per second from the first delivery to the last, and the 2-host run's ratio to the
1-host run of the same invocation. Every host shares this machine's cores with
PostgreSQL and smtp-sink, so "adding up" is bounded by them here.

    .venv/bin/python bench/hosts.py [--digests 4000] [--pg URL]

Needs root (namespaces), iproute2 and socat; installs Postfix for smtp-sink if missing.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from scale import scratch_database  # noqa: E402
from send import ensure_postfix, free_port, readers  # noqa: E402

from newsletter import db  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.models import Delivery  # noqa: E402
from newsletter.plan import plan_digests  # noqa: E402
from tests.netns import made_hosts, why_no_hosts  # noqa: E402

PG_PORT_ON_HOSTS = 15432


def planned_queue(admin: str, home: Path, digests: int) -> str:
    """A scratch database holding ``digests`` planned digests; its URL."""
    url = scratch_database(admin, "newsletter_hosts")
    engine = db.make_engine(url)
    readers(engine, digests, random.Random(5))
    now = datetime.now(UTC)
    environ = {"NEWSLETTER_HOME": str(home), "DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "h" * 40}
    settings = load_settings(environ=environ, dotenv_path=home / "none")
    report = plan_digests(engine=engine, settings=settings, now=now, due_only=False, keep=False)
    assert report.counts["planned"] == digests, report.counts
    engine.dispose()
    return url


def deliver(url: str, hosts: list[tuple[str, str]], sink: int, home: Path) -> float:
    """Workers on ``hosts`` drain the queue; digests per second, first to last sent."""
    engine = db.make_engine(url)
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(Delivery)).scalar_one()
    procs = []
    try:
        for k, (ns, gateway) in enumerate(hosts):
            procs.append(
                subprocess.Popen(
                    ["socat", f"TCP-LISTEN:{PG_PORT_ON_HOSTS},bind={gateway},fork,reuseaddr",
                     f"TCP:127.0.0.1:{sa.make_url(url).port or 5432}"]
                )
            )  # fmt: skip
            (home / f"host{k}").mkdir(exist_ok=True)
            remote = sa.make_url(url).set(host=gateway, port=PG_PORT_ON_HOSTS)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
            env |= {
                "NEWSLETTER_HOME": str(home / f"host{k}"),
                "DATABASE_URL": remote.render_as_string(hide_password=False),
                "NEWSLETTER_SECRET_KEY": "h" * 40,
                "NEWSLETTER_DELIVERY": "smtp",
                "NEWSLETTER_SMTP_HOST": gateway,
                "NEWSLETTER_SMTP_PORT": str(sink),
                "NEWSLETTER_SMTP_POOL_SIZE": "16",
                "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "1000",
            }
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "newsletter", "worker",
                     "--poll", "0.2"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        sent = 0
        deadline = time.monotonic() + 600
        while sent < total and time.monotonic() < deadline:
            time.sleep(0.5)
            with engine.connect() as conn:
                sent = conn.execute(
                    sa.select(sa.func.count()).where(Delivery.status == "sent")
                ).scalar_one()
        assert sent == total, f"{sent} of {total} sent"
        with engine.connect() as conn:
            first, last = conn.execute(
                sa.select(sa.func.min(Delivery.sent_at), sa.func.max(Delivery.sent_at))
            ).one()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        engine.dispose()
    return (total - 1) / (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=int, default=4000)
    parser.add_argument(
        "--pg", default=os.environ.get("NEWSLETTER_TEST_PG", "postgresql://postgres@127.0.0.1/test")
    )
    args = parser.parse_args()
    why = why_no_hosts()
    if why is not None:
        raise SystemExit(why)
    ensure_postfix()
    sink_port = free_port()
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-m", "1000", f"0.0.0.0:{sink_port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", sink_port)) == 0:
                break
        time.sleep(0.05)
    rates = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, made_hosts(2) as hosts:
            for n in (1, 2):
                url = planned_queue(args.pg, Path(tmp), args.digests)
                rates[n] = deliver(url, hosts[:n], sink_port, Path(tmp))
                line = f"{n} host{'s' if n > 1 else ''}: {rates[n]:,.0f} digests/s"
                print(line + (f" ({rates[n] / rates[1]:.2f}x one host's)" if n > 1 else ""))
    finally:
        sink.terminate()
        admin = sa.create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("DROP DATABASE IF EXISTS newsletter_hosts"))
        admin.dispose()


if __name__ == "__main__":
    main()
