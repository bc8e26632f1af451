"""Relevance: a sentence per topic, a dial per subscriber, embeddings of papers and topics.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("topic_filters") as batch_op:
        batch_op.add_column(sa.Column("about", sa.String(length=300), nullable=True))
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(sa.Column("dial", sa.Integer(), server_default="3", nullable=False))
    op.create_table(
        "paper_vectors",
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("text_hash", sa.String(length=32), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("sentences", sa.LargeBinary(), nullable=False),
        sa.Column("spans", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["paper_id"], ["papers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("paper_id"),
    )
    op.create_table(
        "topic_vectors",
        sa.Column("text_hash", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("text_hash"),
    )


def downgrade() -> None:
    op.drop_table("topic_vectors")
    op.drop_table("paper_vectors")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_column("dial")
    with op.batch_alter_table("topic_filters") as batch_op:
        batch_op.drop_column("about")
