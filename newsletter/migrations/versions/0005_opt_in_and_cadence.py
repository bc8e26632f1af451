"""Double opt-in and cadence: pending subscribers, confirmation mail on the ledger,
daily / weekly / paused digests.

Subscribers get ``cadence`` (daily, weekly, paused) and ``weekday`` (0 = Monday,
for weekly). Deliveries get ``kind`` ("digest", or "confirm" for a double opt-in
confirmation); a non-digest has no edition, so ``edition`` becomes nullable (the
one-digest-per-edition constraint ignores NULLs on both databases).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.add_column(
            sa.Column("cadence", sa.String(length=8), server_default="daily", nullable=False)
        )
        batch_op.add_column(sa.Column("weekday", sa.Integer(), nullable=True))
    # Nothing references deliveries with a foreign key, so SQLite's batch rebuild of the
    # table (for the nullable edition) cascades nowhere.
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="digest", nullable=False)
        )
        batch_op.alter_column("edition", existing_type=sa.Date(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE kind <> 'digest'")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.alter_column("edition", existing_type=sa.Date(), nullable=False)
        batch_op.drop_column("kind")
    with op.batch_alter_table("subscribers") as batch_op:
        batch_op.drop_column("weekday")
        batch_op.drop_column("cadence")
