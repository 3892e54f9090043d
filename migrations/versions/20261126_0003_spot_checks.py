"""spot_checks: stored hallucination spot-checks (answers with and without the image, IIG)

Revision ID: 0003_spot_checks
Revises: 0002_run_event_seq
Create Date: 2026-11-26 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_spot_checks"
down_revision: str | None = "0002_run_event_seq"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "spot_checks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("null_image", sa.String(length=10), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_width", sa.Integer(), nullable=False),
        sa.Column("image_height", sa.Integer(), nullable=False),
        sa.Column("thumbnail", sa.Text(), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("results", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_spot_checks_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_spot_checks")),
    )
    op.create_index(op.f("ix_spot_checks_owner_id_id"), "spot_checks", ["owner_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_spot_checks_owner_id_id"), table_name="spot_checks")
    op.drop_table("spot_checks")
