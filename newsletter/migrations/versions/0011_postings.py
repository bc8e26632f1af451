"""Stored postings: each batch of papers indexed once, at ingest (issue 15).

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Papers stored before have no postings (index_segment NULL): the next ingest, or the
    # first query that needs them, indexes them (corpus/postings.index_pending).
    op.create_table(
        "index_segments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("papers", sa.Integer(), nullable=False),
    )
    op.create_table(
        "postings",
        sa.Column("field", sa.String(length=16), primary_key=True),
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column(
            "segment",
            sa.Integer(),
            sa.ForeignKey("index_segments.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("papers", sa.LargeBinary(), nullable=False),
        sa.Column("vals", sa.LargeBinary(), nullable=False),
    )
    with op.batch_alter_table("papers") as batch:
        batch.add_column(sa.Column("index_segment", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("title_stems", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("abstract_stems", sa.Integer(), nullable=True))
        batch.create_index("ix_papers_index_segment", ["index_segment"])


def downgrade() -> None:
    with op.batch_alter_table("papers") as batch:
        batch.drop_index("ix_papers_index_segment")
        batch.drop_column("abstract_stems")
        batch.drop_column("title_stems")
        batch.drop_column("index_segment")
    op.drop_table("postings")
    op.drop_table("index_segments")
