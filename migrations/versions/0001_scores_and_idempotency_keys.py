"""scores, idempotency_keys and the rank index

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

MAX_SAFE_TOTAL = 2**53 - 1

# rank_key: one string whose byte order is the ranking order (score
# descending, then first to reach it, then user id). The same 16 + 16 digits
# on both databases: 2^53 - 1 - total, then reached_at in µs since the epoch.
RANK_KEY = {
    "postgresql": (
        f"lpad(({MAX_SAFE_TOTAL} - total)::text, 16, '0')"
        " || lpad(((extract(epoch from reached_at) * 1000000)::bigint)::text, 16, '0')"
        " || ':' || user_id"
    ),
    # reached_at is stored as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    "sqlite": (
        f"printf('%016d', {MAX_SAFE_TOTAL} - total)"
        " || printf('%010d', CAST(strftime('%s', reached_at) AS INTEGER)) || substr(reached_at, 21, 6)"
        " || ':' || user_id"
    ),
}

# Every change to a row of `scores` records how the rank order changed, in the
# same transaction: -1 for the key that goes, +1 for the key that comes.
TRIGGERS = {
    "postgresql": [
        """
        CREATE FUNCTION scores_rank_delta() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO rank_deltas (board, rank_key, delta) VALUES (NEW.board, NEW.rank_key, 1);
            ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO rank_deltas (board, rank_key, delta) VALUES (OLD.board, OLD.rank_key, -1);
            ELSIF NEW.rank_key IS DISTINCT FROM OLD.rank_key THEN
                INSERT INTO rank_deltas (board, rank_key, delta)
                VALUES (OLD.board, OLD.rank_key, -1), (NEW.board, NEW.rank_key, 1);
            END IF;
            RETURN NULL;
        END
        $$
        """,
        """
        CREATE TRIGGER scores_rank_delta AFTER INSERT OR UPDATE OR DELETE ON scores
        FOR EACH ROW EXECUTE FUNCTION scores_rank_delta()
        """,
    ],
    "sqlite": [
        """
        CREATE TRIGGER scores_rank_insert AFTER INSERT ON scores BEGIN
            INSERT INTO rank_deltas (board, rank_key, delta) VALUES (NEW.board, NEW.rank_key, 1);
        END
        """,
        """
        CREATE TRIGGER scores_rank_update AFTER UPDATE ON scores WHEN NEW.rank_key IS NOT OLD.rank_key BEGIN
            INSERT INTO rank_deltas (board, rank_key, delta)
            VALUES (OLD.board, OLD.rank_key, -1), (NEW.board, NEW.rank_key, 1);
        END
        """,
        """
        CREATE TRIGGER scores_rank_delete AFTER DELETE ON scores BEGIN
            INSERT INTO rank_deltas (board, rank_key, delta) VALUES (OLD.board, OLD.rank_key, -1);
        END
        """,
    ],
}


def _c_collated(length: int | None = None) -> sa.types.TypeEngine:
    """Byte-wise collation on PostgreSQL, matching SQLite and Redis ordering."""
    plain = sa.String(length) if length else sa.Text()
    collated = sa.String(length, collation="C") if length else sa.Text(collation="C")
    return plain.with_variant(collated, "postgresql")


def upgrade():
    dialect = op.get_bind().dialect.name
    op.create_table(
        "scores",
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("user_id", _c_collated(128), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("reached_at", sa.DateTime(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("rank_key", _c_collated(), sa.Computed(RANK_KEY[dialect], persisted=True), nullable=False),
        sa.PrimaryKeyConstraint("board", "user_id", name=op.f("pk_scores")),
    )
    op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
    op.create_table(
        "idempotency_keys",
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("user_id", _c_collated(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("increment", sa.BigInteger(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("board", "user_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"])
    op.create_table(
        "rank_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("rank_key", _c_collated(), nullable=False),
        sa.Column("delta", sa.SmallInteger(), nullable=False),
    )
    op.create_index("ix_rank_deltas_board_rank_key", "rank_deltas", ["board", "rank_key", "delta"])
    op.create_table(
        "rank_buckets",
        sa.Column("board", sa.String(64), nullable=False),
        sa.Column("start_key", _c_collated(), nullable=False),
        sa.Column("users_before", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("board", "start_key", name=op.f("pk_rank_buckets")),
    )
    for statement in TRIGGERS[dialect]:
        op.execute(statement)
    if dialect == "postgresql":
        # rank_deltas is a queue (rows in, folded, deleted): vacuum and
        # analyze it after thousands of changes, not after 20% of its size.
        op.execute(
            "ALTER TABLE rank_deltas SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,"
            " autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000)"
        )


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER scores_rank_delta ON scores")
        op.execute("DROP FUNCTION scores_rank_delta()")
    op.drop_table("rank_buckets")
    op.drop_index("ix_rank_deltas_board_rank_key", table_name="rank_deltas")
    op.drop_table("rank_deltas")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_scores_rank", table_name="scores")
    op.drop_table("scores")
