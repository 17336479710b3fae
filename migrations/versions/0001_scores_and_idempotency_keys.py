"""scores and idempotency_keys

Revision ID: 0001
Revises:
Create Date: 2026-11-29

"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _user_id() -> sa.types.TypeEngine:
    # Byte-wise collation on PostgreSQL, matching SQLite and Redis ordering.
    return sa.String(128).with_variant(sa.String(128, collation="C"), "postgresql")


def upgrade():
    op.create_table(
        "scores",
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("user_id", _user_id(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("reached_at", sa.DateTime(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("board", "user_id", name=op.f("pk_scores")),
    )
    op.create_index(
        "ix_scores_rank",
        "scores",
        ["board", sa.text("total DESC"), "reached_at", "user_id"],
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("user_id", _user_id(), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("increment", sa.BigInteger(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("board", "user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"])


def downgrade():
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_scores_rank", table_name="scores")
    op.drop_table("scores")
