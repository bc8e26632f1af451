"""Link salts and held sign-ups.

Subscribers get ``token_salt``: random per subscriber and signed into every link,
so a link never acts on someone who later gets the same id (SQLite reuses the
highest id after a delete) and one person's links can be revoked. Existing
subscribers get a salt here, which changes the links in mail already sent: the
same effect as rotating the key, once.

``signups`` holds what a web sign-up asked for until it is confirmed, so an
anonymous sign-up changes nothing stored about an existing person.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(
            sa.Column("token_salt", sa.String(length=32), server_default="", nullable=False)
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE subscribers SET token_salt = substr(md5(random()::text || id::text), 1, 16)"
        )
    else:
        op.execute("UPDATE subscribers SET token_salt = lower(hex(randomblob(8)))")
    op.create_table(
        "signups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("topics", sa.Text(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("send_at", sa.String(length=5), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signups_email", "signups", ["email"])
    op.create_index("ix_signups_created_at", "signups", ["created_at"])
    op.create_index("ix_signups_subscriber_id", "signups", ["subscriber_id"])


def downgrade() -> None:
    op.drop_table("signups")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_column("token_salt")
