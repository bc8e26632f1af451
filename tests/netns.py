"""Hosts on this machine: network namespaces, each with its own loopback and an address
on a veth pair to this one, and a TCP forwarder standing for the network to a service
that listens on this machine's loopback only (PostgreSQL). Used by tests/test_hosts.py
and bench/hosts.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator


def why_no_hosts() -> str | None:
    """Why hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 to make network namespaces"
    probe = f"nlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None if made.returncode == 0 else "network namespaces are not available here"


class Forwarder:
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


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@contextlib.contextmanager
def made_hosts(count: int) -> Iterator[list[tuple[str, str]]]:
    """``count`` hosts: (namespace name, this side's address on its link)."""
    made = []
    tag, net = os.getpid() % 10000, os.getpid() % 250
    try:
        for k in range(1, count + 1):
            ns, a, b = f"nlhost{k}-{os.getpid()}", f"nlv{k}a{tag}", f"nlv{k}b{tag}"
            gateway, address = f"10.{200 + k}.{net}.1", f"10.{200 + k}.{net}.2"
            sh("ip", "netns", "add", ns)
            made.append((ns, a))
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", b, "netns", ns)
            sh("ip", "addr", "add", f"{gateway}/24", "dev", a)
            sh("ip", "link", "set", a, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", b)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", b, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield [(ns, f"10.{200 + k}.{net}.1") for k, (ns, _) in enumerate(made, 1)]
    finally:
        for ns, a in made:
            subprocess.run(["ip", "link", "del", a], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
