"""Paper identity, links and live sources: arXiv ids, authors by name, categories,
code and project links, summaries; what each live source last answered.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAPER_COLUMNS = (
    ("arxiv_id", sa.String(length=32)),
    ("arxiv_version", sa.Integer()),
    ("author_names", sa.Text()),
    ("categories", sa.String(length=300)),
    ("code_url", sa.String(length=500)),
    ("project_url", sa.String(length=500)),
    ("summary", sa.Text()),
    ("keywords", sa.Text()),
    ("sources", sa.String(length=100)),
)


def upgrade() -> None:
    with op.batch_alter_table("papers") as batch_op:
        for name, type_ in _PAPER_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.create_unique_constraint("uq_papers_arxiv_id", ["arxiv_id"])
    # Every paper stored so far came from a page dump.
    op.execute("UPDATE papers SET sources = 'dump'")
    op.create_table(
        "source_state",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=1000), nullable=False),
        sa.Column("etag", sa.String(length=500), nullable=True),
        sa.Column("last_modified", sa.String(length=100), nullable=True),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=300), nullable=True),
        sa.Column("papers", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("source_state")
    with op.batch_alter_table("papers") as batch_op:
        batch_op.drop_constraint("uq_papers_arxiv_id", type_="unique")
        for name, _ in reversed(_PAPER_COLUMNS):
            batch_op.drop_column(name)
