"""repo_document.mime_type as wide as ebRIM 3.0's mimeType (LongName, 256 characters)."""
from alembic import op
import sqlalchemy as sa

revision = "repository_0002"
down_revision = "repository_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("repo_document") as batch:
        batch.alter_column("mime_type", type_=sa.String(256), existing_type=sa.String(128), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("repo_document") as batch:
        batch.alter_column("mime_type", type_=sa.String(128), existing_type=sa.String(256), existing_nullable=False)
