"""repo_pending: the documents of ITI-41 requests whose registry outcome is not settled yet."""
from alembic import op
import sqlalchemy as sa

revision = "repository_0003"
down_revision = "repository_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by RepositoryStore.create_schema (metadata.create_all) and then stamped at 0001
    # has the table already, as the current schema defines it.
    if "repo_pending" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "repo_pending",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("unique_id", sa.String(300), nullable=False),
        sa.Column("hash", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mime_type", sa.String(256), nullable=False),
        sa.Column("staged", sa.String(512), nullable=False),
        sa.Column("repository_unique_id", sa.String(64), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_repo_pending_deadline", "repo_pending", ["deadline"])


def downgrade() -> None:
    op.drop_index("ix_repo_pending_deadline", "repo_pending")
    op.drop_table("repo_pending")
