"""The repo_document table as repository/schema.py first defined it (and metadata.create_all made it).

Written out in full rather than taken from the schema module, which will keep changing while
this revision must keep creating the same thing.
"""
from alembic import op
import sqlalchemy as sa

revision = "repository_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "repo_document",
        sa.Column("unique_id", sa.String(300), primary_key=True),
        sa.Column("hash", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("location", sa.String(512), nullable=False),
        sa.Column("repository_unique_id", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("repo_document")
