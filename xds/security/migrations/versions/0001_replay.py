"""sec_replay: the Assertion/@IDs already used, until they expire (the replay cache)."""
from alembic import op
import sqlalchemy as sa

revision = "security_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sec_replay",
        sa.Column("assertion_id", sa.String(256), primary_key=True),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sec_replay_expires", "sec_replay", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_sec_replay_expires", "sec_replay")
    op.drop_table("sec_replay")
