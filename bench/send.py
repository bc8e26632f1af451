"""Benchmark: plan + render + send 10,000 digests to Postfix's smtp-sink on loopback.

Run: .venv/bin/python bench/send.py [--subscribers N] [--naive-sample N] [--profile [--sort KEY]]

Needs Postfix's smtp-sink and smtp-source (Debian package ``postfix``); the
script installs it with apt-get when they are missing and it runs as root.

Three figures, measured in the same run against the same sink:
  ours     end to end: plan every subscriber's digest (10-20 papers each), then
           deliver them all through the SMTP pool (render + MIME + send + ledger)
  naive    the paper-digest scripts' loop for the same digests: build each with
           email.message.EmailMessage, send it with smtplib, one at a time
           (timed on a sample and scaled)
  source   smtp-source pushing messages of the same size with as many sessions:
           what this box's loopback SMTP can take at all
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import resource
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import select

from newsletter import db, eventloop
from newsletter.backends.smtp import SMTPBackend
from newsletter.config import load_settings
from newsletter.corpus.ingest import ingest
from newsletter.deliver import DELIVERY_BATCH, deliver_due
from newsletter.ledger.claims import LEDGER_COLUMNS
from newsletter.ledger.jobs import DigestJob, load_jobs
from newsletter.models import Subscriber, TopicFilter
from newsletter.parallel import DeliveryProcesses
from newsletter.plan import plan_digests
from newsletter.render import BatchRenderer
from newsletter.runtime import build_runtime

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
# Filters that each match 10 to 60 of the bundled papers, so every digest holds 10-20.
FILTERS = [
    '"language model"', "diffusion", "reinforcement", "quantiz* OR pruning", '"vision transformer"',
    "3D", "LoRA OR adapter", "continual", "distillation", "reasoning", "attention", "benchmark",
    "video", "graph", "agent*", '"in-context"', "retrieval", "robot*", "speech OR audio", "sparse",
]  # fmt: skip


def ensure_postfix() -> None:
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return
    print("installing postfix (for smtp-sink and smtp-source) from Debian's packages")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(port: int) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", "-m", "1000", f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("smtp-sink did not start")


def setup(home: Path, port: int, count: int, pool: int) -> tuple[object, object]:
    settings = load_settings(
        environ={
            "NEWSLETTER_HOME": str(home),
            "NEWSLETTER_DELIVERY": "smtp",
            "NEWSLETTER_SMTP_HOST": "127.0.0.1",
            "NEWSLETTER_SMTP_PORT": str(port),
            "NEWSLETTER_SMTP_POOL_SIZE": str(pool),
            "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "1000",
            "NEWSLETTER_SECRET_KEY": "b" * 40,
            "NEWSLETTER_FROM": "digest@papers.example",
        },
        dotenv_path=home / "none",
    )
    engine = db.make_engine(settings.database_url)
    readers(engine, count, random.Random(3))
    return settings, engine


def readers(engine: sa.Engine, count: int, rng: random.Random) -> None:
    """The corpus ingested now, and ``count`` readers of two of FILTERS each."""
    db.upgrade(engine=engine)
    now = datetime.now(UTC)
    ingest(engine=engine, paths=[CORPUS], now=now)
    with db.session_scope(engine=engine) as session:
        subs = [
            Subscriber(email=f"r{i}@example.org", created_at=now, updated_at=now)
            for i in range(count)
        ]
        session.add_all(subs)
        session.flush()
        session.add_all(
            TopicFilter(subscriber_id=s.id, query=q, created_at=now)  # type: ignore[arg-type]
            for s in subs
            for q in rng.sample(FILTERS, 2)
        )


def ours(settings, engine, workers: int, batch: int) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """What `newsletter send --now --workers N` does: N delivery processes start,
    then planning commits digests batch by batch while they deliver."""
    busy_start = _machine_busy()
    start = time.perf_counter()
    cpu_start = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    runtime = build_runtime(settings=settings, engine=engine)
    if workers > 1:
        with DeliveryProcesses(runtime=runtime, workers=workers, batch_size=batch) as pool:
            planned = plan_digests(
                engine=engine, settings=settings, now=datetime.now(UTC), due_only=False
            )
            planned_at = time.perf_counter()
            report = pool.finish()
    else:
        planned = plan_digests(
            engine=engine, settings=settings, now=datetime.now(UTC), due_only=False
        )
        planned_at = time.perf_counter()
        report = eventloop.run(
            deliver_due(
                runtime=runtime,
                backend=SMTPBackend(settings=settings.smtp),
                now=lambda: datetime.now(UTC),
                batch_size=batch,
            )
        )
    end = time.perf_counter()
    own, children = (
        (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for before, after in zip(
            cpu_start,
            (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            ),
            strict=True,
        )
    )
    busy = _machine_busy() - busy_start
    print(f"CPU      this process {own:.2f} s, delivery processes {children:.2f} s", end="")
    print(f" over {end - start:.2f} s wall; the machine's cores busy {busy:.2f} s", end="")
    print(f" of {(end - start) * (os.cpu_count() or 1):.2f}")
    assert report.count("sent") == len(planned.planned), report.outcomes[:3]
    return len(planned.planned), planned_at - start, end - planned_at


def _machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy (user, nice, system, irq, softirq),
    from /proc/stat: what is left of the cores is what nobody could use."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def naive(settings, engine, port: int, sample: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Per message: EmailMessage (what the digest scripts build) and smtplib, one at a time."""
    runtime = build_runtime(settings=settings, engine=engine)
    renderer = BatchRenderer()
    with db.session_scope(engine=engine) as session:
        rows = list(session.exec(select(*LEDGER_COLUMNS).limit(sample)))  # type: ignore[call-overload]
        jobs = load_jobs(session=session, rows=rows, links=runtime.links)
        rendered = [
            renderer.render(digest=job.digest, sender=runtime.sender)
            for job in jobs
            if isinstance(job, DigestJob)
        ]
    size = 0
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for r in rendered:
            msg = EmailMessage(policy=SMTP)
            for name, value in r.headers:
                msg[name] = value
            msg.set_content(r.text, subtype="plain", charset="utf-8", cte="quoted-printable")
            msg.add_alternative(r.html, subtype="html", charset="utf-8", cte="quoted-printable")
            data = msg.as_bytes()
            size += len(data)
            smtp.sendmail(
                settings.from_address, [dict(r.headers)["To"].rpartition("<")[2].rstrip(">")], data
            )
    return (time.perf_counter() - start) / len(rendered), size // len(rendered)


def source(port: int, count: int, size: int, sessions: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
         "-f", "digest@papers.example", "-t", "r@example.org", f"127.0.0.1:{port}"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--naive-sample", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=16, help="SMTP sessions per process")
    parser.add_argument(
        "--batch", type=int, default=DELIVERY_BATCH, help="rows a delivery process claims at once"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="delivery processes (send --workers)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where our time goes (1 worker)"
    )
    parser.add_argument("--sort", default="tottime", help="the profile's order (cumulative, ...)")
    args = parser.parse_args()
    ensure_postfix()
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings, engine = setup(Path(tmp), port, args.subscribers, args.pool)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            workers = 1 if args.profile else args.workers
            count, t_plan, t_send = ours(settings, engine, workers, args.batch)
            if profiler:
                profiler.disable()
            per_naive, size = naive(settings, engine, port, args.naive_sample)
            sink_cpu = _cpu_seconds(sink.pid)
            print(f"CPU      smtp-sink {sink_cpu:.2f} s for our digests")
            # as many sessions as all our processes opened together
            t_source = source(port, count, size, args.pool * workers)
        ours_rate = count / (t_plan + t_send)
        naive_rate = 1 / per_naive
        source_rate = count / t_source
        print(
            f"{count:,} digests, ~{size / 1000:.0f} kB each, {args.pool} SMTP sessions per process"
        )
        print(f"ours     {ours_rate:8.0f} digests/s end to end", end=" ")
        if workers > 1:
            print(
                f"({workers} delivery processes; plan {t_plan:.2f} s, overlapping delivery,",
                end=" ",
            )
            print(f"then {t_send:.2f} s more)")
        else:
            print(f"(plan {t_plan:.2f} s + deliver {t_send:.2f} s)")
        print(f"naive    {naive_rate:8.0f} digests/s", end=" ")
        print(f"(EmailMessage + smtplib, {args.naive_sample} sampled)")
        print(f"source   {source_rate:8.0f} messages/s (smtp-source, same size and sessions)")
        print(f"ratios   ours/naive {ours_rate / naive_rate:.1f}x", end="   ")
        print(f"ours/source {ours_rate / source_rate:.2f}")
        if profiler:
            stats = pstats.Stats(profiler).sort_stats(args.sort)
            stats.print_stats(25)
            stats.print_callers("method .sub. of")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
