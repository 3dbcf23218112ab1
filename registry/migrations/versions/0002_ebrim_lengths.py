"""Columns as wide as ebRIM 3.0 lets the values be: a coded value is stored as code^^codingScheme,
and both nodeRepresentation and the codingScheme slot value are LongName (256 characters), so 514;
mimeType is a LongName too (256). Validation refuses anything longer on every backend.
"""
from alembic import op
import sqlalchemy as sa

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None

OLD_CODE, NEW_CODE = sa.String(300), sa.String(514)
WIDENED = {
    "doc_entry": [(c, OLD_CODE, NEW_CODE) for c in
                  ("class_code", "type_code", "format_code", "practice_setting_code", "hcft_code")]
    + [("mime_type", sa.String(128), sa.String(256))],
    "submission_set": [("content_type_code", OLD_CODE, NEW_CODE)],
    "object_code": [("code", OLD_CODE, NEW_CODE)],
}


def _alter(to_new: bool) -> None:
    for table, columns in WIDENED.items():
        # batch: SQLite changes a column's type only by copying the table; PostgreSQL gets ALTER COLUMN.
        with op.batch_alter_table(table) as batch:
            for name, old, new in columns:
                batch.alter_column(name, type_=new if to_new else old, existing_type=old if to_new else new)


def upgrade() -> None:
    _alter(True)


def downgrade() -> None:
    _alter(False)
