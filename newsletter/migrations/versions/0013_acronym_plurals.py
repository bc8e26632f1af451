"""The analysis changed: a word without vowels loses its plural "s" when stemmed ("llms",
"LLMS" are "llm", as "LLMs" always was), so every stored posting is analysed again.

The postings are dropped and every paper marked unindexed; ``index_pending``, which runs
after each ingest and before anything reads the postings, indexes them again under the
current analysis (``newsletter papers reindex`` does it at once). Both ways: after a
downgrade the older analysis rebuilds them the same way.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _analyse_again() -> None:
    op.execute(sa.text("UPDATE papers SET index_segment = NULL"))
    op.execute(sa.text("DELETE FROM postings"))
    op.execute(sa.text("DELETE FROM index_segments"))


def upgrade() -> None:
    _analyse_again()


def downgrade() -> None:
    _analyse_again()
