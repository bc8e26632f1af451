"""Delivery in several processes beside planning: ``newsletter send`` on every core.

One Python process renders and speaks SMTP on one core at most. ``DeliveryProcesses``
forks ``workers`` delivery processes, each with its own SMTP pool, before the parent
plans; they claim digests as the planner commits them (planning commits batch by
batch), so planning and delivery overlap and both cores work. The ledger does the
coordination, exactly as with separate ``newsletter worker`` processes: claims are
atomic (one UPDATE under SQLite's write lock; ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so no digest is sent twice.

The children report outcomes to the parent through a queue, in batches, so the
command still prints one summary and every failure. They stop when the parent says
planning is over and nothing due is left, on SIGTERM/SIGINT (after the batch in
hand), or when the parent dies (they notice it is gone, finish their batch and exit,
and their leases expire as any dead worker's do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import queue
from collections.abc import Callable
from types import TracebackType
from typing import Self

from newsletter import eventloop
from newsletter.config import Settings
from newsletter.deliver import DELIVERY_BATCH, DeliverReport, Outcome, run_worker
from newsletter.errors import NewsletterError
from newsletter.models import utcnow
from newsletter.runtime import Runtime

_REPORT_EVERY = 200  # outcomes sent to the parent per message on the queue
_IDLE_SECONDS = 0.05  # how often an idle worker looks again while planning goes on


class DeliveryWorkerError(NewsletterError):
    """A delivery process ended abnormally (its claimed digests are retried after the lease)."""


def worker_settings(*, settings: Settings, workers: int, postgresql: bool) -> Settings:
    """Each process's settings: the global SMTP rate split between them, unless it is
    already shared through PostgreSQL (see backends.get_backend)."""
    if postgresql or not settings.smtp.rate:
        return settings
    smtp = dataclasses.replace(settings.smtp, rate=settings.smtp.rate / workers)
    return dataclasses.replace(settings, smtp=smtp)


class DeliveryProcesses:
    """``with DeliveryProcesses(...) as pool: plan(); report = pool.finish()``."""

    def __init__(self, *, runtime: Runtime, workers: int, batch_size: int = DELIVERY_BATCH) -> None:
        self.runtime = runtime
        self.workers = workers
        self.batch_size = batch_size
        # fork: a child starts in milliseconds with everything imported; it drops the
        # parent's pooled database connections before using the database (below).
        self._mp = multiprocessing.get_context("fork")
        self._done = self._mp.Event()
        self._outcomes: multiprocessing.Queue[list[Outcome]] = self._mp.Queue()
        self._procs: list[multiprocessing.process.BaseProcess] = []

    def __enter__(self) -> Self:
        runtime = self.runtime
        postgresql = runtime.engine.dialect.name == "postgresql"
        settings = worker_settings(
            settings=runtime.settings, workers=self.workers, postgresql=postgresql
        )
        # The children take this runtime as it is (key, links, signer): they sign links
        # exactly as the parent and every other process does.
        child_runtime = dataclasses.replace(runtime, settings=settings)
        for _ in range(self.workers):
            proc = self._mp.Process(
                target=_child,
                args=(child_runtime, self._done, self._outcomes, os.getpid(), self.batch_size),
                name="newsletter-deliver",
            )
            proc.start()
            self._procs.append(proc)
        return self

    def finish(self, *, on_outcome: Callable[[Outcome], None] | None = None) -> DeliverReport:
        """Planning is over: wait for the workers to deliver everything due, and report."""
        self._done.set()
        report = DeliverReport()

        def take(batch: list[Outcome]) -> None:
            for outcome in batch:
                report.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

        while any(p.is_alive() for p in self._procs):
            with contextlib.suppress(queue.Empty):
                take(self._outcomes.get(timeout=0.1))
        while True:  # what the last ones sent before exiting
            try:
                take(self._outcomes.get(timeout=0.05))
            except queue.Empty:
                break
        failed = [p.exitcode for p in self._procs if p.exitcode != 0]
        self._procs.clear()
        if failed:
            raise DeliveryWorkerError(
                f"{len(failed)} delivery process(es) failed (exit codes {failed}); "
                "their digests are retried once their lease expires"
            )
        return report

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Planning failed or we were interrupted: the workers finish their batch and stop.
        self._done.set()
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: handled as a stop request
        for proc in self._procs:
            proc.join()
        self._outcomes.close()


def _child(
    runtime: Runtime,
    done: multiprocessing.synchronize.Event,
    outcomes: multiprocessing.Queue[list[Outcome]],
    parent: int,
    batch_size: int,
) -> None:
    # Everything inherited from the parent is long-lived: keep it out of the cyclic
    # collector's scans (and its pages unshared by them).
    gc.freeze()
    runtime = runtime.in_child()
    backend = runtime.backend()
    pending: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        pending.append(outcome)
        if len(pending) >= _REPORT_EVERY:
            flush()

    def flush() -> None:
        if pending:
            outcomes.put(list(pending))
            pending.clear()

    async def run() -> None:
        stop = eventloop.stop_on_signals()
        await run_worker(
            runtime=runtime,
            backend=backend,
            now=utcnow,
            stop=stop,
            poll_seconds=_IDLE_SECONDS,
            on_outcome=report,
            on_round=flush,
            # Planning is over (or the parent is gone) and a round found nothing due.
            until=lambda: done.is_set() or os.getppid() != parent,
            batch_size=batch_size,
        )

    eventloop.run(run())
    flush()
