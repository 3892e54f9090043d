"""datasets.benchmark and images_path: benchmarks registered as evaluation datasets

Revision ID: 0006_benchmark_datasets
Revises: 0005_dataset_formats
Create Date: 2026-12-05 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_benchmark_datasets"
down_revision: str | None = "0005_dataset_formats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("benchmark", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("images_path", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("images_path")
        batch.drop_column("benchmark")
