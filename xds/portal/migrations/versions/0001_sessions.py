"""portal_session: the patients' sign-in sessions; portal_login: the sign-ins under way (state, nonce,
PKCE verifier) between /portal/login and /portal/callback."""
from alembic import op
import sqlalchemy as sa

revision = "portal_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "portal_session",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("patient_id", sa.String(256), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("csrf_hash", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_portal_session_expires", "portal_session", ["expires"])
    op.create_table(
        "portal_login",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("browser_hash", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("verifier", sa.String(128), nullable=False),
        sa.Column("next_path", sa.String(1024), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_portal_login_expires", "portal_login", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_portal_login_expires", "portal_login")
    op.drop_table("portal_login")
    op.drop_index("ix_portal_session_expires", "portal_session")
    op.drop_table("portal_session")
