"""A digest's papers as one JSON snapshot on its ledger row (deliveries.items).

delivery_items held one row per paper of every digest: 10-20 rows written and
read back per digest. A digest is written once and read whole, so its papers
now live on the delivery row (format: newsletter.snapshot), with the metadata
shown as it was when planned. Existing rows are carried over; their metadata
is taken from the papers as they are now.

Revision ID: 0004
Revises: 0003
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("items", sa.Text(), server_default="[]", nullable=False))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT i.delivery_id, i.paper_id, i.matched_topics, i.matched_terms,"
            " p.upvotes, p.authors, p.organization, p.published_on"
            " FROM delivery_items i JOIN papers p ON p.id = i.paper_id"
            " ORDER BY i.delivery_id, i.position"
        )
    )
    items: dict[int, list[dict[str, object]]] = {}
    for delivery_id, paper_id, topics, terms, upvotes, authors, org, published in rows:
        items.setdefault(delivery_id, []).append(
            {
                "id": paper_id,
                "topics": json.loads(topics),
                "terms": json.loads(terms),
                "upvotes": upvotes,
                "authors": authors,
                "org": org,
                "published": str(published)[:10] if published else None,
            }
        )
    update = sa.text("UPDATE deliveries SET items = :items WHERE id = :id")
    for delivery_id, papers in items.items():
        text = json.dumps(papers, ensure_ascii=False, separators=(",", ":"))
        bind.execute(update, {"items": text, "id": delivery_id})
    with op.batch_alter_table("delivery_items") as batch_op:
        batch_op.drop_index("ix_delivery_items_paper_id")
        batch_op.drop_index("ix_delivery_items_delivery_id")
    op.drop_table("delivery_items")


def downgrade() -> None:
    bind = op.get_bind()
    snapshots = list(bind.execute(sa.text("SELECT id, items FROM deliveries")))
    # The column goes first: on SQLite, batch mode rebuilds the deliveries table, and
    # dropping the old one would cascade to rows already in delivery_items.
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("items")
    op.create_table(
        "delivery_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("paper_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("matched_topics", sa.Text(), nullable=False),
        sa.Column("matched_terms", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["paper_id"], ["papers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("delivery_id", "paper_id", name="uq_delivery_item"),
    )
    with op.batch_alter_table("delivery_items") as batch_op:
        batch_op.create_index("ix_delivery_items_delivery_id", ["delivery_id"])
        batch_op.create_index("ix_delivery_items_paper_id", ["paper_id"])
    insert = sa.text(
        "INSERT INTO delivery_items (delivery_id, paper_id, position, matched_topics,"
        " matched_terms) VALUES (:d, :p, :pos, :topics, :terms)"
    )
    for delivery_id, text in snapshots:
        for pos, item in enumerate(json.loads(text)):
            bind.execute(
                insert,
                {
                    "d": delivery_id,
                    "p": item["id"],
                    "pos": pos,
                    "topics": json.dumps(item["topics"]),
                    "terms": json.dumps(item["terms"]),
                },
            )
