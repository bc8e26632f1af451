"""Delivery: the loop that claims due rows, renders them, hands them to a backend, records.

States: pending -> sending -> sent | failed (| cancelled when the subscriber left
before it went out). The ledger (``newsletter.ledger``) holds the claims and the
outcomes; this module is only the loop:

1. queue the confirmations of sign-ups waiting for one;
2. claim a batch (a lease: a dead worker's rows are taken back when it runs out; a
   live worker renews the leases of the rows it holds until their outcomes are
   recorded, and skips any row another worker took);
3. prepare each job on its own: a row that cannot be read back or rendered fails
   alone, with its reason recorded, and the rest of the batch goes out;
4. send over ``width`` lanes, so a pool of SMTP connections is kept busy;
5. record outcomes in small groups as they come (every ``RECORD_EVERY`` messages or
   ``RECORD_SECONDS``), so a crash resends at most about one group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from newsletter import signups
from newsletter.backends.base import EmailBackend, OutgoingMessage
from newsletter.db import session_scope
from newsletter.errors import DeliveryError, NewsletterError, PermanentDeliveryError
from newsletter.ledger import (
    ConfirmationJob,
    DigestJob,
    Job,
    OutcomeStatus,
    claim_rows,
    expire,
    record_cancelled,
    record_failure,
    record_sent,
    renew,
)
from newsletter.ledger.jobs import JobLoader
from newsletter.render import BatchRenderer, outgoing, outgoing_confirmation
from newsletter.runtime import Runtime

log = logging.getLogger(__name__)

DELIVERY_BATCH = 200  # rows claimed at once
RECORD_EVERY = 32  # outcomes per write: what a kill -9 can leave sent but unrecorded
RECORD_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery_id: int
    email: str
    status: OutcomeStatus
    error: str | None = None
    subscriber_id: int | None = None  # for logs: ids, not addresses


@dataclass(slots=True)
class DeliverReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


@dataclass(frozen=True, slots=True)
class _Ready:
    """A job with what to send, or why it cannot be sent."""

    job: Job
    message: OutgoingMessage | None
    error: DeliveryError | None


class _Recorder:
    """Outcomes recorded as they come, in groups of ``size`` or after ``seconds``: the
    fewer sent-but-unrecorded messages a crash can leave, the fewer are sent twice.

    A group the ledger refuses (locked, connection lost) is kept, not dropped, and the
    round stops taking jobs (``failed``): ``close`` tries it again, so what was sent is
    recorded as sent when the database comes back in time, and is never left to be
    claimed and sent again because a write failed once."""

    def __init__(
        self,
        *,
        loop: DeliveryLoop,
        now: Callable[[], datetime],
        emit: Callable[[Outcome], None],
        size: int,
        seconds: float,
        failed: list[BaseException],
    ) -> None:
        self._loop, self._now, self._emit = loop, now, emit
        self._size, self._seconds = size, seconds
        self._failed = failed
        self._pending: list[tuple[Job, DeliveryError | None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, job: Job, error: DeliveryError | None) -> None:
        self._pending.append((job, error))
        if len(self._pending) >= self._size:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group, self._pending = self._pending, []
        if not group:
            return
        outcomes: list[Outcome] = []
        try:
            self._loop.record(group, now=self._now(), into=outcomes)
        except Exception as exc:
            # Kept: what was not recorded yet, not what was (the sent rows would count
            # another attempt each time the group was tried again).
            rest = group[len(outcomes) :]
            log.warning("cannot record %d outcomes: %s", len(rest), exc)
            self._pending = rest + self._pending
            self._failed.append(exc)
        for outcome in outcomes:
            self._emit(outcome)

    async def close(self, *, tries: int = 3, pause: float = 0.5) -> None:
        """Record what is left, trying again a little later when the ledger refuses."""
        for attempt in range(tries):
            if attempt:
                await asyncio.sleep(pause * 2 ** (attempt - 1))
            self.flush()
            if not self._pending:
                return
        raise self._failed[0]


class DeliveryLoop:
    """Claims, prepares, sends and records, batch after batch, over an open backend."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        backend: EmailBackend,
        now: Callable[[], datetime],
        batch_size: int = DELIVERY_BATCH,
        concurrency: int | None = None,
        subscriber_id: int | None = None,
        record_every: int = RECORD_EVERY,
        record_seconds: float = RECORD_SECONDS,
    ) -> None:
        self.runtime, self.backend, self.now = runtime, backend, now
        self.batch_size = batch_size
        self.width = concurrency or runtime.settings.smtp.pool_size
        self.subscriber_id = subscriber_id
        self.record_every, self.record_seconds = record_every, record_seconds
        self.loader = JobLoader(links=runtime.links, confirm_hours=runtime.settings.confirm_hours)
        self.renderer = BatchRenderer()  # its caches live as long as this loop
        self.lease = timedelta(seconds=runtime.settings.lease_seconds)
        # The rows claimed and not yet recorded, with the lease each holds; and those
        # another worker took (a renewal came too late): they are not sent from here.
        self._held: dict[int, datetime] = {}
        self._lost: set[int] = set()

    async def drain(
        self,
        *,
        on_outcome: Callable[[Outcome], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> DeliverReport:
        """Send everything due once; returns when nothing due is left (or on ``stop``,
        after the batch in hand is finished and recorded)."""
        report = DeliverReport()

        def emit(outcome: Outcome) -> None:
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)

        settings = self.runtime.settings
        if self.subscriber_id is None:
            signups.queue_confirmations(
                engine=self.runtime.engine,
                now=self.now(),
                message_id_domain=settings.message_id_domain,
            )
        failed: list[BaseException] = []
        recorder = _Recorder(
            loop=self, now=self.now, emit=emit, size=self.record_every,
            seconds=self.record_seconds, failed=failed,
        )  # fmt: skip
        queue = self._due(emit, stop, failed)
        self._held.clear()  # a failed round's rows wait for their leases, as after a crash
        self._lost.clear()
        keeper = asyncio.create_task(self._keep_leases())

        async def lane() -> None:
            # `width` lanes take the next job from one shared generator: as many sends in
            # flight as connections, without a task and a semaphore round per message.
            # The lane that finds a batch taken claims the next while the others still
            # send theirs: no pause at the end of each batch.
            try:
                for job in queue:
                    if job.delivery_id in self._lost:
                        continue  # another worker has it now
                    ready = self.prepare(job)
                    error = ready.error
                    if ready.message is not None:
                        try:
                            await self.backend.send(ready.message)
                        except DeliveryError as exc:
                            error = exc
                    recorder.add(job, error)
            except Exception as exc:  # the others stop taking jobs (see _due)
                failed.append(exc)

        try:
            # Every lane ends before the outcomes are recorded and the loop returns or
            # raises: a failing lane (or claim) never leaves sends in flight unrecorded.
            await asyncio.gather(*(lane() for _ in range(self.width)))
        finally:
            keeper.cancel()
            await recorder.close()  # what was sent is recorded, even when a lane failed
        if failed:
            raise failed[0]
        return report

    def _due(
        self,
        emit: Callable[[Outcome], None],
        stop: asyncio.Event | None,
        failed: list[BaseException],
    ) -> Iterator[Job]:
        """The jobs to send, batch after batch, until nothing due is left, ``stop`` is set
        (after the batch in hand), or a lane ``failed`` (at once: the rest of the batch
        stays claimed until its lease runs out, as after a crash): each batch claimed,
        loaded, and those no longer wanted cancelled. First, those past the deadline
        are given up (``claims.expire``)."""
        deadline = timedelta(hours=self.runtime.settings.retry.deadline_hours)
        expired = expire(
            engine=self.runtime.engine, now=self.now(), deadline=deadline,
            subscriber_id=self.subscriber_id,
        )  # fmt: skip
        for delivery_id, to_address, subscriber_id in expired:
            emit(Outcome(delivery_id, to_address, OutcomeStatus.FAILED,
                         "not sent within the retry deadline", subscriber_id))  # fmt: skip
        while not (stop and stop.is_set()) and not failed:
            now = self.now()
            rows = claim_rows(
                engine=self.runtime.engine,
                now=now,
                limit=self.batch_size,
                subscriber_id=self.subscriber_id,
                lease=self.lease,
            )
            if not rows:
                return
            self._held.update((row.id, now + self.lease) for row in rows)
            with session_scope(engine=self.runtime.engine) as session:
                jobs = self.loader.load(session=session, rows=rows)
            gone = [j for j in jobs if not j.wanted]
            record_cancelled(
                engine=self.runtime.engine,
                delivery_ids=[j.delivery_id for j in gone],
                now=self.now(),
            )
            for job in gone:
                self._held.pop(job.delivery_id, None)
                emit(
                    Outcome(
                        job.delivery_id,
                        job.to_address,
                        OutcomeStatus.CANCELLED,
                        "subscriber is no longer active",
                        job.subscriber_id,
                    )
                )
            for job in jobs:
                if failed:
                    return
                if job.wanted:
                    yield job

    async def _keep_leases(self) -> None:
        """Renew the held rows' leases every third of a lease, for as long as the round
        lasts: a batch outlasting its lease must not be claimed again while in hand."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                self.renew()
            except Exception:  # the database is away: try again next time
                log.exception("cannot renew the leases of the rows in hand")

    def renew(self) -> None:
        """Extend the lease of every row held; forget those another worker took."""
        until = self.now() + self.lease
        by_lease: dict[datetime, list[int]] = {}
        for delivery_id, held_until in self._held.items():
            by_lease.setdefault(held_until, []).append(delivery_id)
        for held_until, ids in by_lease.items():
            kept = renew(engine=self.runtime.engine, ids=ids, held_until=held_until, until=until)
            for delivery_id in ids:
                if delivery_id in kept:
                    self._held[delivery_id] = until
                else:
                    del self._held[delivery_id]
                    self._lost.add(delivery_id)

    def prepare(self, job: Job) -> _Ready:
        """The message for one job, or the permanent error why there is none."""
        runtime = self.runtime
        try:
            if isinstance(job, DigestJob):
                message = outgoing(
                    digest=job.digest,
                    sender=runtime.sender,
                    signer=runtime.signer,
                    renderer=self.renderer,
                    return_path=job.return_path,
                )
            elif isinstance(job, ConfirmationJob):
                message = outgoing_confirmation(
                    confirmation=job.confirmation,
                    sender=runtime.sender,
                    signer=runtime.signer,
                    return_path=job.return_path,
                )
            else:
                return _Ready(job, None, PermanentDeliveryError(f"cannot render: {job.problem}"))
        except Exception as exc:  # one message that cannot be built fails alone
            # What bad data causes is one line; anything else is a bug: its traceback.
            expected = isinstance(exc, NewsletterError | ValueError | UnicodeError)
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "cannot render a message",
                exc_info=None if expected else exc,
                extra={
                    "delivery_id": job.delivery_id,
                    "subscriber_id": job.subscriber_id,
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            error = PermanentDeliveryError(f"cannot render: {type(exc).__name__}: {exc}")
            return _Ready(job, None, error)
        return _Ready(job, message, None)

    def record(
        self,
        group: list[tuple[Job, DeliveryError | None]],
        *,
        now: datetime,
        into: list[Outcome] | None = None,
    ) -> list[Outcome]:
        """Record the group's outcomes, sent ones first; each is appended to ``into`` as
        it is written, so when a write fails, ``group`` ordered as written (sent first)
        minus ``len(into)`` is what is left to record."""
        engine = self.runtime.engine
        outcomes = [] if into is None else into
        # What the relay took is sent, whoever holds the row now. A failure is written
        # only under the lease this worker holds: a row another worker took is theirs.
        # Held until written: a refused write is tried again.
        group.sort(key=lambda pair: pair[1] is not None)  # sent first, as written
        held = [(job, error, self._held.get(job.delivery_id)) for job, error in group]
        sent = [job for job, error, _ in held if error is None]
        record_sent(
            engine=engine, deliveries=[(j.delivery_id, j.subscriber_id) for j in sent], now=now
        )
        outcomes += [
            Outcome(j.delivery_id, j.to_address, OutcomeStatus.SENT, None, j.subscriber_id)
            for j in sent
        ]
        for job in sent:
            self._held.pop(job.delivery_id, None)
        for job, error, lease in held:
            if error is not None:
                status = OutcomeStatus.RETRYING  # another worker's row now
                if lease is not None:
                    status = record_failure(
                        engine=engine,
                        delivery_id=job.delivery_id,
                        held=lease,
                        now=now,
                        error=error,
                        policy=self.runtime.settings.retry,
                    )
                outcomes.append(
                    Outcome(job.delivery_id, job.to_address, status, str(error), job.subscriber_id)
                )
                self._held.pop(job.delivery_id, None)
        return outcomes


async def deliver_due(
    *,
    runtime: Runtime,
    backend: EmailBackend,
    now: Callable[[], datetime],
    batch_size: int = DELIVERY_BATCH,
    concurrency: int | None = None,
    subscriber_id: int | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    stop: asyncio.Event | None = None,
) -> DeliverReport:
    """Send every due delivery once, opening and closing ``backend`` around it."""
    loop = DeliveryLoop(
        runtime=runtime,
        backend=backend,
        now=now,
        batch_size=batch_size,
        concurrency=concurrency,
        subscriber_id=subscriber_id,
    )
    async with backend:
        return await loop.drain(on_outcome=on_outcome, stop=stop)


async def run_worker(
    *,
    runtime: Runtime,
    backend: EmailBackend,
    now: Callable[[], datetime],
    stop: asyncio.Event,
    poll_seconds: float = 5.0,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_round: Callable[[], None] | None = None,
    until: Callable[[], bool] | None = None,
    batch_size: int = DELIVERY_BATCH,
) -> int:
    """Deliver continuously until ``stop`` is set, or until ``until()`` held before a
    round that found nothing due; returns how many attempts were made.

    The backend (the SMTP pool) is opened once and stays open across polls.
    ``on_round`` is called after every round: the service's heartbeat.
    """
    attempts = 0
    loop = DeliveryLoop(runtime=runtime, backend=backend, now=now, batch_size=batch_size)
    async with backend:
        while not stop.is_set():
            last_round = until is not None and until()  # read before delivering
            report = await loop.drain(on_outcome=on_outcome, stop=stop)
            attempts += len(report.outcomes)
            if on_round is not None:
                on_round()
            if last_round and not report.outcomes:
                break
            with contextlib.suppress(TimeoutError):  # the poll interval passed: look again
                await asyncio.wait_for(stop.wait(), timeout=poll_seconds)
    return attempts
