"""datasets.format, import_path and import_columns: datasets imported from other formats

Revision ID: 0005_dataset_formats
Revises: 0004_audit_log_outbox
Create Date: 2026-12-05 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_dataset_formats"
down_revision: str | None = "0004_audit_log_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("format", sa.String(length=20), server_default="manifest", nullable=False))
        batch.add_column(sa.Column("import_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("import_columns", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("import_columns")
        batch.drop_column("import_path")
        batch.drop_column("format")
