"""rename api_keys.quota_key_id to quota_holder_id: it holds a key's integer id, while key_id is the public handle

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    _rename("quota_key_id", "quota_holder_id")


def downgrade() -> None:
    _rename("quota_holder_id", "quota_key_id")


def _rename(old: str, new: str) -> None:
    # The foreign key is named after its column, so it is renamed too. Two batches (each rebuilds the table on
    # SQLite): the new constraint can only name the column once the rename has happened.
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(f"fk_api_keys_{old}_api_keys", type_="foreignkey")
        batch_op.alter_column(old, new_column_name=new)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_foreign_key(f"fk_api_keys_{new}_api_keys", "api_keys", [new], ["id"], ondelete="SET NULL")
