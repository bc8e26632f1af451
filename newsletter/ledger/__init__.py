"""The ledger: the ``deliveries`` table and its events, the truth between stages.

Planning writes rows, the delivery loop claims and records them, the web pages,
metrics and the CLI read them. Each of those depends on this package and never
on another stage:

* ``claims``: take due rows with a lease, and renew it while they are sent; give up
  on those past the deadline;
* ``jobs``: rebuild what a claimed row is to send (a digest, a confirmation, or a
  row that cannot be read back), one row never spoiling another;
* ``outcomes``: record sent, retrying, failed, bounced, cancelled;
* ``queries``: the operator's counts and the admin actions.
"""

from newsletter.ledger.claims import LEASE, claim, claim_rows, expire, renew
from newsletter.ledger.jobs import ConfirmationJob, DigestJob, Job, UnreadableJob, load_jobs
from newsletter.ledger.outcomes import (
    OutcomeStatus,
    backoff,
    record_cancelled,
    record_failure,
    record_sent,
)
from newsletter.ledger.queries import retry_failed, stats, unsubscribes_by_edition

__all__ = [
    "LEASE",
    "ConfirmationJob",
    "DigestJob",
    "Job",
    "OutcomeStatus",
    "UnreadableJob",
    "backoff",
    "claim",
    "claim_rows",
    "expire",
    "load_jobs",
    "record_cancelled",
    "record_failure",
    "record_sent",
    "renew",
    "retry_failed",
    "stats",
    "unsubscribes_by_edition",
]
