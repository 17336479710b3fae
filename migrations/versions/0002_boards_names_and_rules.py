"""boards, display names, and a rank key that follows each board's order

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

Every board that already has rows becomes a registered board (settings of
the old single-board deployment; the services apply the environment's to the
default board when they start). `scores.ascending` says whether lower is
better on the row's board, and `rank_key` follows it. `idempotency_keys`'s
`increment` becomes `fingerprint`: what identifies the first request's body.

"""

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MAX_SAFE_TOTAL = 2**53 - 1

# rank_key: one string whose byte order is the ranking order: the better
# value first (higher, or lower on an ascending board), then whoever reached
# it first, then user id. 16 digits of the value's distance from the best
# end, 16 digits of reached_at in µs since the epoch, ':', user_id.
RANK_KEY = {
    "postgresql": (
        f"lpad((CASE WHEN ascending THEN total ELSE {MAX_SAFE_TOTAL} - total END)::text, 16, '0')"
        " || lpad(((extract(epoch from reached_at) * 1000000)::bigint)::text, 16, '0')"
        " || ':' || user_id"
    ),
    # reached_at is stored as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    "sqlite": (
        f"printf('%016d', CASE WHEN ascending THEN total ELSE {MAX_SAFE_TOTAL} - total END)"
        " || printf('%010d', CAST(strftime('%s', reached_at) AS INTEGER)) || substr(reached_at, 21, 6)"
        " || ':' || user_id"
    ),
}
OLD_RANK_KEY = {
    "postgresql": (
        f"lpad(({MAX_SAFE_TOTAL} - total)::text, 16, '0')"
        " || lpad(((extract(epoch from reached_at) * 1000000)::bigint)::text, 16, '0')"
        " || ':' || user_id"
    ),
    "sqlite": (
        f"printf('%016d', {MAX_SAFE_TOTAL} - total)"
        " || printf('%010d', CAST(strftime('%s', reached_at) AS INTEGER)) || substr(reached_at, 21, 6)"
        " || ':' || user_id"
    ),
}

# SQLite drops a table's triggers with it; 0001's, written again after the rebuild.
SQLITE_TRIGGERS = [
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
]


def _c_collated(length=None):
    """Byte-wise collation on PostgreSQL, matching SQLite and Redis ordering."""
    plain = sa.String(length) if length else sa.Text()
    collated = sa.String(length, collation="C") if length else sa.Text(collation="C")
    return plain.with_variant(collated, "postgresql")


def _existing_boards(bind):
    rows = bind.execute(
        sa.text(
            "SELECT board FROM scores UNION SELECT board FROM idempotency_keys"
            " UNION SELECT board FROM rank_buckets UNION SELECT board FROM rank_deltas"
        )
    )
    return sorted(row[0] for row in rows)


def upgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    boards = op.create_table(
        "boards",
        sa.Column("id", sa.String(64), nullable=False),
        # Set once, when the board is created: Redis state that carries another
        # uid (another database's board, or a deleted board's) is rebuilt.
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("title", sa.String(120), nullable=False),
        sa.Column("top_n", sa.Integer(), nullable=False),
        sa.Column("sort_order", sa.String(4), nullable=False),
        sa.Column("operator", sa.String(4), nullable=False),
        sa.Column("score_min", sa.BigInteger(), nullable=False),
        sa.Column("score_max", sa.BigInteger(), nullable=False),
        sa.Column("reset", sa.String(100), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boards")),
        sa.CheckConstraint("sort_order IN ('desc', 'asc')", name=op.f("ck_boards_sort_order")),
        sa.CheckConstraint("operator IN ('incr', 'best', 'set')", name=op.f("ck_boards_operator")),
        sa.CheckConstraint("top_n BETWEEN 1 AND 1000", name=op.f("ck_boards_top_n")),
        sa.CheckConstraint(
            f"0 <= score_min AND score_min <= score_max AND score_max <= {MAX_SAFE_TOTAL}",
            name=op.f("ck_boards_score_bounds"),
        ),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    existing = _existing_boards(bind)
    if existing:
        op.bulk_insert(
            boards,
            [
                {
                    "id": board,
                    "uid": secrets.token_hex(16),
                    "title": board,
                    "top_n": 10,
                    "sort_order": "desc",
                    "operator": "incr",
                    "score_min": 1,
                    "score_max": 1_000_000,
                    "reset": "none",
                    "timezone": "UTC",
                    "created_at": now,
                    "updated_at": now,
                }
                for board in existing
            ],
        )

    op.create_table(
        "user_names",
        sa.Column("user_id", _c_collated(128), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_names")),
    )
    op.execute("ALTER TABLE idempotency_keys RENAME COLUMN increment TO fingerprint")

    if dialect == "postgresql":
        op.add_column("scores", sa.Column("ascending", sa.Boolean(), nullable=False, server_default=sa.false()))
        op.drop_column("scores", "rank_key")  # and ix_scores_rank with it
        op.add_column(
            "scores",
            sa.Column("rank_key", _c_collated(), sa.Computed(RANK_KEY[dialect], persisted=True), nullable=False),
        )
        op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
        op.create_foreign_key(op.f("fk_scores_board_boards"), "scores", "boards", ["board"], ["id"])
    else:
        # SQLite can neither add a stored generated column nor a foreign key:
        # build the table anew, as SQLite's documentation describes.
        op.execute("DROP INDEX ix_scores_rank")
        op.execute(
            f"""
            CREATE TABLE scores_new (
                board VARCHAR(64) NOT NULL REFERENCES boards (id),
                user_id VARCHAR(128) NOT NULL,
                total BIGINT NOT NULL,
                reached_at DATETIME NOT NULL,
                version BIGINT NOT NULL,
                ascending BOOLEAN NOT NULL DEFAULT 0,
                rank_key TEXT GENERATED ALWAYS AS ({RANK_KEY[dialect]}) STORED NOT NULL,
                CONSTRAINT pk_scores PRIMARY KEY (board, user_id)
            )
            """
        )
        op.execute(
            "INSERT INTO scores_new (board, user_id, total, reached_at, version)"
            " SELECT board, user_id, total, reached_at, version FROM scores"
        )
        op.execute("DROP TABLE scores")
        op.execute("ALTER TABLE scores_new RENAME TO scores")
        op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade():
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.drop_constraint(op.f("fk_scores_board_boards"), "scores", type_="foreignkey")
        op.drop_column("scores", "rank_key")
        op.add_column(
            "scores",
            sa.Column("rank_key", _c_collated(), sa.Computed(OLD_RANK_KEY[dialect], persisted=True), nullable=False),
        )
        op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
        op.drop_column("scores", "ascending")
    else:
        op.execute("DROP INDEX ix_scores_rank")
        op.execute(
            f"""
            CREATE TABLE scores_old (
                board VARCHAR(64) NOT NULL,
                user_id VARCHAR(128) NOT NULL,
                total BIGINT NOT NULL,
                reached_at DATETIME NOT NULL,
                version BIGINT NOT NULL,
                rank_key TEXT GENERATED ALWAYS AS ({OLD_RANK_KEY[dialect]}) STORED NOT NULL,
                CONSTRAINT pk_scores PRIMARY KEY (board, user_id)
            )
            """
        )
        op.execute(
            "INSERT INTO scores_old (board, user_id, total, reached_at, version)"
            " SELECT board, user_id, total, reached_at, version FROM scores"
        )
        op.execute("DROP TABLE scores")
        op.execute("ALTER TABLE scores_old RENAME TO scores")
        op.create_index("ix_scores_rank", "scores", ["board", "rank_key"])
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)
    op.execute("ALTER TABLE idempotency_keys RENAME COLUMN fingerprint TO increment")
    op.drop_table("user_names")
    op.drop_table("boards")
