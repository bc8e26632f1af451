"""A digest's snapshot stored once for every digest that holds the same (issue 15).

deliveries.items held each digest's papers, 3 to 5 kB a row: a million digests wrote
gigabytes a day, mostly the same few thousand rankings over again, and every claim and
every outcome rewrote them with the row. They move to ``snapshots`` (keyed by a hash of
the text, newsletter.snapshot.key), which deliveries reference. Rows are carried over in
batches by id, so a large ledger never sits in memory whole.

Revision ID: 0012
Revises: 0011
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 2000


def _key(text: str) -> str:
    # newsletter.snapshot.key, frozen here: a migration must not change with the code.
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("snapshot_id", sa.String(length=32), nullable=True))
    bind = op.get_bind()
    read = sa.text(
        "SELECT id, items, created_at FROM deliveries WHERE kind = 'digest' AND id > :last"
        " ORDER BY id LIMIT :n"
    )
    insert = sa.text("INSERT INTO snapshots (id, items, created_at) VALUES (:id, :items, :at)")
    point = sa.text("UPDATE deliveries SET snapshot_id = :key WHERE id = :id")
    stored: set[str] = set()
    last = 0
    while rows := bind.execute(read, {"last": last, "n": _BATCH}).all():
        keys = {}
        for _, text, at in rows:
            if text not in keys:
                keys[text] = _key(text)
                if keys[text] not in stored:
                    stored.add(keys[text])
                    bind.execute(insert, {"id": keys[text], "items": text, "at": at})
        bind.execute(point, [{"key": keys[text], "id": did} for did, text, _ in rows])
        last = rows[-1][0]
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("items")
        batch.create_foreign_key("fk_deliveries_snapshot", "snapshots", ["snapshot_id"], ["id"])
        batch.create_index("ix_deliveries_snapshot_id", ["snapshot_id"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("items", sa.Text(), server_default="[]", nullable=False))
    op.get_bind().execute(
        sa.text(
            "UPDATE deliveries SET items = (SELECT s.items FROM snapshots s"
            " WHERE s.id = deliveries.snapshot_id) WHERE snapshot_id IS NOT NULL"
        )
    )
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_snapshot_id")
        batch.drop_constraint("fk_deliveries_snapshot", type_="foreignkey")
        batch.drop_column("snapshot_id")
    op.drop_table("snapshots")
