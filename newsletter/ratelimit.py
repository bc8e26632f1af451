"""Rate limits: messages per second for the SMTP relay.

``TokenBucket`` holds one process to a rate. ``SharedTokenBucket`` holds every
worker on a PostgreSQL ledger to one rate together: the bucket's level lives
in the ``rate_buckets`` row, and each worker takes tokens from it in small
chunks (one locked read-modify-write per chunk, not per message) and spends
them locally.
"""

from __future__ import annotations

import asyncio
import time

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from newsletter.db import session_scope
from newsletter.models import RateBucket, utcnow


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class SharedTokenBucket:
    """One bucket for all processes, kept in the database (PostgreSQL)."""

    def __init__(self, *, engine: sa.Engine, rate: float, name: str = "smtp") -> None:
        self.engine, self.rate, self.name = engine, rate, name
        self.capacity = max(1.0, rate)
        # A chunk is a tenth of a second's worth: few round trips, little unfairness.
        self.chunk = max(1.0, rate / 10)
        self.local = 0.0
        self.lock = asyncio.Lock()

    def _take(self) -> tuple[float, float]:
        """Take up to a chunk of tokens; returns (taken, seconds until one is available)."""
        now = utcnow()
        with session_scope(engine=self.engine) as session:
            session.execute(
                pg_insert(RateBucket)
                .values(name=self.name, tokens=self.capacity, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = session.get(RateBucket, self.name, with_for_update=True)
            assert row is not None
            elapsed = max(0.0, (now - row.updated_at).total_seconds())
            level = min(self.capacity, row.tokens + elapsed * self.rate)
            taken = min(self.chunk, float(int(level)))
            row.tokens, row.updated_at = level - taken, now
            wait = 0.0 if taken else (1 - level) / self.rate
        return taken, wait

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        async with self.lock:
            while self.local < 1:
                taken, wait = await asyncio.to_thread(self._take)
                self.local += taken
                if not taken:
                    await asyncio.sleep(wait)
            self.local -= 1
