"""scores: when the row's period ends, so a write that waited for the row past it changes nothing

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

A submission's period is checked by the statement that writes it. A write
that waits for a row locked by a concurrent one can be checked before the
wait and write after it; with the end on the row, the upsert checks it again
once it holds the row (app.leaderboard.records). NULL on a board without
resets, and on rows written before this revision (their period was checked
only before any wait, as it was then).

"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable, no default: adding it rewrites nothing, whatever the table's size.
    op.add_column("scores", sa.Column("period_end", sa.DateTime(), nullable=True))


def downgrade():
    op.drop_column("scores", "period_end")
