"""metering: identities, quota refill, key enable/disable, hourly usage history

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:10:00

Existing keys keep their quota and counts; they come out enabled, without an identity or a refill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import keystile.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _refill_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("quota_refill_amount", sa.BigInteger(), nullable=True),
        sa.Column("quota_refill_interval", sa.String(length=8), nullable=True),
        sa.Column("quota_refilled_at", keystile.db.UTCDateTime(timezone=True), nullable=True),
    ]


def _hour_counts() -> list[sa.Column[Any]]:
    return [
        sa.Column("hour", keystile.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid", sa.BigInteger(), nullable=False),
        sa.Column("rate_limited", sa.BigInteger(), nullable=False),
        sa.Column("quota_exceeded", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=True),
        sa.Column("rate_limit_window_seconds", sa.Integer(), nullable=True),
        sa.Column("quota_remaining", sa.BigInteger(), nullable=True),
        *_refill_columns(),
        sa.Column("created_at", keystile.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_identities_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identities")),
        sa.UniqueConstraint("user_id", "external_id", name="uq_identities_user_id_external_id"),
    )
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identities_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False))
        for column in _refill_columns():
            batch_op.add_column(column)
        batch_op.add_column(sa.Column("identity_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_keys_identity_id"), ["identity_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_api_keys_identity_id_identities"), "identities", ["identity_id"], ["id"]
        )

    op.create_table(
        "key_usage_hours",
        *_hour_counts(),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"], ["api_keys.id"], name=op.f("fk_key_usage_hours_api_key_id_api_keys"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("api_key_id", "hour", name=op.f("pk_key_usage_hours")),
    )
    op.create_table(
        "identity_usage_hours",
        *_hour_counts(),
        sa.Column("identity_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["identity_id"],
            ["identities.id"],
            name=op.f("fk_identity_usage_hours_identity_id_identities"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("identity_id", "hour", name=op.f("pk_identity_usage_hours")),
    )
    for table in ("key_usage_hours", "identity_usage_hours"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_hour"), ["hour"], unique=False)


def downgrade() -> None:
    for table in ("identity_usage_hours", "key_usage_hours"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_hour"))
        op.drop_table(table)
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_api_keys_identity_id_identities"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_api_keys_identity_id"))
        batch_op.drop_column("identity_id")
        for name in ("quota_refilled_at", "quota_refill_interval", "quota_refill_amount", "enabled"):
            batch_op.drop_column(name)
    with op.batch_alter_table("identities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identities_user_id"))
    op.drop_table("identities")
