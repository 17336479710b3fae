"""rank_buckets by their count: the bucket where a rank is, in one index probe

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_rank_buckets_board_users_before", "rank_buckets", ["board", "users_before"])


def downgrade():
    op.drop_index("ix_rank_buckets_board_users_before", table_name="rank_buckets")
