"""periods: a board's standings, and its rank index, per period (seasons)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

`scores`, `rank_deltas` and `rank_buckets` get a `period` column: the id of
the period a row counts in, "" on a board without resets (so every row that
exists keeps counting where it did). The rank index leads with (board,
period), so each period is ranked on its own, and the trigger that writes the
rank index's changes carries the period along. `scores`' key is (board,
user_id, period): a user's periods of a board sit together, and no query
that counts a period's rows in rank order is tempted to walk the key instead.

"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

MAX_SAFE_TOTAL = 2**53 - 1

PG_TRIGGER_FUNCTION = """
    CREATE OR REPLACE FUNCTION scores_rank_delta() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO rank_deltas (board, period, rank_key, delta) VALUES (NEW.board, NEW.period, NEW.rank_key, 1);
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO rank_deltas (board, period, rank_key, delta) VALUES (OLD.board, OLD.period, OLD.rank_key, -1);
        ELSIF NEW.rank_key IS DISTINCT FROM OLD.rank_key THEN
            INSERT INTO rank_deltas (board, period, rank_key, delta)
            VALUES (OLD.board, OLD.period, OLD.rank_key, -1), (NEW.board, NEW.period, NEW.rank_key, 1);
        END IF;
        RETURN NULL;
    END
    $$
"""

PG_OLD_TRIGGER_FUNCTION = """
    CREATE OR REPLACE FUNCTION scores_rank_delta() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""

SQLITE_RANK_KEY = (
    f"printf('%016d', CASE WHEN ascending THEN total ELSE {MAX_SAFE_TOTAL} - total END)"
    " || printf('%010d', CAST(strftime('%s', reached_at) AS INTEGER)) || substr(reached_at, 21, 6)"
    " || ':' || user_id"
)


# 0001's triggers on scores (SQLite drops them with the table), with the period and without.
SQLITE_TRIGGERS = {
    True: [
        """
        CREATE TRIGGER scores_rank_insert AFTER INSERT ON scores BEGIN
            INSERT INTO rank_deltas (board, period, rank_key, delta) VALUES (NEW.board, NEW.period, NEW.rank_key, 1);
        END
        """,
        """
        CREATE TRIGGER scores_rank_update AFTER UPDATE ON scores WHEN NEW.rank_key IS NOT OLD.rank_key BEGIN
            INSERT INTO rank_deltas (board, period, rank_key, delta)
            VALUES (OLD.board, OLD.period, OLD.rank_key, -1), (NEW.board, NEW.period, NEW.rank_key, 1);
        END
        """,
        """
        CREATE TRIGGER scores_rank_delete AFTER DELETE ON scores BEGIN
            INSERT INTO rank_deltas (board, period, rank_key, delta) VALUES (OLD.board, OLD.period, OLD.rank_key, -1);
        END
        """,
    ],
    False: [
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


def _sqlite_rebuild(with_period):
    """SQLite cannot change a primary key: build scores and rank_buckets anew (SQLite's documented way).

    The rows copied are all in period "" (the column's default), either way.
    """
    period_column = "period VARCHAR(32) NOT NULL DEFAULT ''," if with_period else ""
    key = "board, period" if with_period else "board"
    score_key = "board, user_id, period" if with_period else "board, user_id"
    op.execute("DROP INDEX ix_scores_rank")
    op.execute(
        f"""
        CREATE TABLE scores_new (
            board VARCHAR(64) NOT NULL REFERENCES boards (id),
            {period_column}
            user_id VARCHAR(128) NOT NULL,
            total BIGINT NOT NULL,
            reached_at DATETIME NOT NULL,
            version BIGINT NOT NULL,
            ascending BOOLEAN NOT NULL DEFAULT 0,
            rank_key TEXT GENERATED ALWAYS AS ({SQLITE_RANK_KEY}) STORED NOT NULL,
            previous_total BIGINT,
            previous_version BIGINT,
            CONSTRAINT pk_scores PRIMARY KEY ({score_key})
        )
        """
    )
    columns = "board, user_id, total, reached_at, version, ascending, previous_total, previous_version"
    op.execute(f"INSERT INTO scores_new ({columns}) SELECT {columns} FROM scores")  # noqa: S608
    op.execute("DROP TABLE scores")
    op.execute("ALTER TABLE scores_new RENAME TO scores")
    op.create_index("ix_scores_rank", "scores", [*key.split(", "), "rank_key"])
    for statement in SQLITE_TRIGGERS[with_period]:
        op.execute(statement)

    op.drop_index("ix_rank_buckets_board_users_before", table_name="rank_buckets")
    op.execute(
        f"""
        CREATE TABLE rank_buckets_new (
            board VARCHAR(64) NOT NULL,
            {period_column}
            start_key TEXT NOT NULL,
            users_before BIGINT NOT NULL,
            CONSTRAINT pk_rank_buckets PRIMARY KEY ({key}, start_key)
        )
        """
    )
    columns = "board, start_key, users_before"
    op.execute(
        f"INSERT INTO rank_buckets_new ({columns}) SELECT {columns} FROM rank_buckets"  # noqa: S608
    )
    op.execute("DROP TABLE rank_buckets")
    op.execute("ALTER TABLE rank_buckets_new RENAME TO rank_buckets")
    # With start_key: "the last bucket at or before a count" is one step back in the index.
    op.create_index(
        "ix_rank_buckets_board_users_before", "rank_buckets", [*key.split(", "), "users_before", "start_key"]
    )


def upgrade():
    dialect = op.get_bind().dialect.name
    op.drop_index("ix_rank_deltas_board_rank_key", table_name="rank_deltas")
    op.add_column("rank_deltas", sa.Column("period", sa.String(32), nullable=False, server_default=""))
    op.create_index("ix_rank_deltas_board_rank_key", "rank_deltas", ["board", "period", "rank_key", "delta"])
    if dialect == "postgresql":
        op.add_column("scores", sa.Column("period", sa.String(32), nullable=False, server_default=""))
        op.drop_constraint("pk_scores", "scores", type_="primary")
        op.create_primary_key("pk_scores", "scores", ["board", "user_id", "period"])
        op.drop_index("ix_scores_rank", table_name="scores")
        op.create_index("ix_scores_rank", "scores", ["board", "period", "rank_key"])
        op.add_column("rank_buckets", sa.Column("period", sa.String(32), nullable=False, server_default=""))
        op.drop_constraint("pk_rank_buckets", "rank_buckets", type_="primary")
        op.create_primary_key("pk_rank_buckets", "rank_buckets", ["board", "period", "start_key"])
        op.drop_index("ix_rank_buckets_board_users_before", table_name="rank_buckets")
        op.create_index("ix_rank_buckets_board_users_before", "rank_buckets", ["board", "period", "users_before"])
        op.execute(PG_TRIGGER_FUNCTION)
    else:
        _sqlite_rebuild(with_period=True)


def downgrade():
    dialect = op.get_bind().dialect.name
    # Only the periods of boards without resets ("") fit the old keys.
    op.execute("DELETE FROM scores WHERE period <> ''")
    op.execute("DELETE FROM rank_buckets WHERE period <> ''")
    op.execute("DELETE FROM rank_deltas WHERE period <> ''")
    if dialect == "postgresql":
        op.execute(PG_OLD_TRIGGER_FUNCTION)
        op.drop_index("ix_rank_buckets_board_users_before", table_name="rank_buckets")
        op.drop_constraint("pk_rank_buckets", "rank_buckets", type_="primary")
        op.drop_column("rank_buckets", "period")
        op.create_primary_key("pk_rank_buckets", "rank_buckets", ["board", "start_key"])
        op.create_index("ix_rank_buckets_board_users_before", "rank_buckets", ["board", "users_before"])
        op.drop_index("ix_scores_rank", table_name="scores")
        op.drop_constraint("pk_scores", "scores", type_="primary")
        op.drop_column("scores", "period")
        op.create_primary_key("pk_scores", "scores", ["board", "user_id"])
        op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
    else:
        _sqlite_rebuild(with_period=False)
    op.drop_index("ix_rank_deltas_board_rank_key", table_name="rank_deltas")
    op.drop_column("rank_deltas", "period")
    op.create_index("ix_rank_deltas_board_rank_key", "rank_deltas", ["board", "rank_key", "delta"])
