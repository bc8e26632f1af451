"""Beyond one machine: delivery workers on separate hosts sharing one PostgreSQL queue.

Each "host" is a network namespace of its own (its own loopback, its own address on a
veth pair), made for this test with iproute2. PostgreSQL and the SMTP server listen on
this machine's loopback only, so a small TCP forwarder on each host's gateway address
stands for the network between them. Two `newsletter worker` processes, one per host,
and a `newsletter scheduler` on each (one leads, the other waits) drain one queue:
every digest is accepted exactly once, none is lost, and both hosts do part of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from newsletter import db
from newsletter.models import Delivery
from newsletter.plan import plan_digests
from tests.conftest import IN_CI, drop_pg_database, make_pg_database, make_settings
from tests.helpers import add_paper, subscribe
from tests.netns import Forwarder, made_hosts, why_no_hosts
from tests.smtp_server import SMTPServer

DIGESTS = 300
NOW = datetime.now(UTC)


@pytest.fixture
def hosts() -> Iterator[list[tuple[str, str]]]:
    """Two hosts: (namespace name, gateway address on this side)."""
    why = why_no_hosts()
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    with made_hosts(2) as made:
        yield made


def test_workers_on_two_hosts_share_one_postgresql_queue(
    tmp_path: Path, pg_server: str, hosts: list[tuple[str, str]]
) -> None:
    url = make_pg_database(pg_server)
    server = SMTPServer().start()
    forwarders: list[Forwarder] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        engine = db.make_engine(url)
        db.upgrade(engine=engine)
        add_paper(engine, title="Diffusion", abstract="Diffusion.", seen=NOW - timedelta(hours=1))
        for i in range(DIGESTS):
            subscribe(engine, email=f"r{i}@example.org", topics=["diffusion"], now=NOW)
        plan_digests(engine=engine, settings=make_settings(tmp_path, url), now=NOW, due_only=False)
        pg_port = sa.make_url(url).port or 5432
        for k, (ns, gateway) in enumerate(hosts, 1):
            forwarders += [
                Forwarder(gateway, 15432, pg_port),
                Forwarder(gateway, 12525, server.port),
            ]
            home = tmp_path / f"host{k}"
            home.mkdir()
            remote = sa.make_url(url).set(host=gateway, port=15432)
            env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
            env |= {
                "NEWSLETTER_HOME": str(home),
                "DATABASE_URL": remote.render_as_string(hide_password=False),
                "NEWSLETTER_SECRET_KEY": "h" * 40,
                "NEWSLETTER_DELIVERY": "smtp",
                "NEWSLETTER_SMTP_HOST": gateway,
                "NEWSLETTER_SMTP_PORT": "12525",
                "NEWSLETTER_PLAN_MINUTES": "60",
            }
            for command in (["worker", "--poll", "0.2"], ["scheduler"]):
                procs.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", ns, sys.executable, "-m", "newsletter", *command],
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + 90
        while len(server.handler.accepted) < DIGESTS and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # anything sent twice would have arrived by now
    finally:
        for p in procs:
            p.terminate()
        outputs = [p.communicate(timeout=30)[0].decode() for p in procs]
        for f in forwarders:
            f.close()
        server.stop()
    try:
        copies = Counter(a.recipient for a in server.handler.accepted)
        assert len(copies) == DIGESTS and set(copies.values()) == {1}, "each once, none lost"
        with db.session_scope(engine=engine) as session:
            statuses = Counter(session.exec(select(Delivery.status)))
        assert statuses == {"sent": DIGESTS}
        worker_lines = [out.count(": sent") for out in outputs[0::2]]
        assert sum(worker_lines) == DIGESTS and all(n > 0 for n in worker_lines), worker_lines
        leaders = [out for out in outputs[1::2] if "leading: this process plans" in out]
        assert len(leaders) == 1, outputs[1::2]
    finally:
        engine.dispose()
        drop_pg_database(pg_server, url)
