"""scores: the value and version each change replaced, for the change log

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    # Nullable, no default: adding them rewrites nothing, whatever the table's size.
    op.add_column("scores", sa.Column("previous_total", sa.BigInteger(), nullable=True))
    op.add_column("scores", sa.Column("previous_version", sa.BigInteger(), nullable=True))


def downgrade():
    op.drop_column("scores", "previous_version")
    op.drop_column("scores", "previous_total")
