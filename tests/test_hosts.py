"""Beyond one machine: delivery workers on separate hosts sharing one PostgreSQL queue.

Each "host" is a network namespace of its own (its own loopback, its own address on a
veth pair), made for this test with iproute2. PostgreSQL and the SMTP server listen on
this machine's loopback only, so a small TCP forwarder on each host's gateway address
stands for the network between them. Two `newsletter worker` processes, one per host,
and a `newsletter scheduler` on each (one leads, the other waits) drain one queue:
every digest is accepted exactly once, none is lost, and both hosts do part of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
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
from tests.smtp_server import SMTPServer

DIGESTS = 300
NOW = datetime.now(UTC)


def _can_make_hosts() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 to make network namespaces"
    probe = f"nlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if made.returncode == 0 else "network namespaces are not available here"


class _Forwarder:
    """Accepts on (host, port) and pipes each connection to 127.0.0.1:target."""

    def __init__(self, host: str, port: int, target: int) -> None:
        self.listener = socket.create_server((host, port))
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def hosts() -> Iterator[list[tuple[str, str]]]:
    """Two hosts: (namespace name, gateway address on this side)."""
    why = _can_make_hosts()
    if why is not None:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)
    made = []
    tag, net = os.getpid() % 10000, os.getpid() % 250
    try:
        for k in (1, 2):
            ns, a, b = f"nlhost{k}-{os.getpid()}", f"nlv{k}a{tag}", f"nlv{k}b{tag}"
            gateway, address = f"10.{200 + k}.{net}.1", f"10.{200 + k}.{net}.2"
            _sh("ip", "netns", "add", ns)
            made.append((ns, a))
            _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            _sh("ip", "link", "set", b, "netns", ns)
            _sh("ip", "addr", "add", f"{gateway}/24", "dev", a)
            _sh("ip", "link", "set", a, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", b)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", b, "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield [(ns, f"10.{200 + k}.{net}.1") for k, (ns, _) in enumerate(made, 1)]
    finally:
        for ns, a in made:
            subprocess.run(["ip", "link", "del", a], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_workers_on_two_hosts_share_one_postgresql_queue(
    tmp_path: Path, pg_server: str, hosts: list[tuple[str, str]]
) -> None:
    url = make_pg_database(pg_server)
    server = SMTPServer().start()
    forwarders: list[_Forwarder] = []
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
                _Forwarder(gateway, 15432, pg_port),
                _Forwarder(gateway, 12525, server.port),
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
