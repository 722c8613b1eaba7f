"""Orders: orders and their lines, transitions, the inbox, locations, the stock ledger and its
movements, reservations, assignments, routing decisions, rule sets, channels and their feed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

compatible = True
"""Only new tables: software of 0005 runs on this schema unchanged."""


def upgrade() -> None:
    op.create_table('orders_channels',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.String(length=200), nullable=True),
    sa.Column('mapping', sa.JSON(), nullable=True),
    sa.Column('replay_window_s', sa.Integer(), nullable=False),
    sa.Column('status_url', sa.String(length=500), nullable=True),
    sa.Column('atp_url', sa.String(length=500), nullable=True),
    sa.Column('atp_buffer', sa.Integer(), nullable=False),
    sa.Column('atp_locations', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_orders_channels'))
    )
    op.create_table('orders_feed',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('next_attempt_at', UtcDateTime(), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_feed'))
    )
    op.create_index('ix_orders_feed_due', 'orders_feed', ['status', 'next_attempt_at'], unique=False)
    op.create_table('orders_inbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('received_at', UtcDateTime(), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('order_id', sa.BigInteger(), nullable=True),
    sa.Column('resolved_by', sa.String(length=120), nullable=True),
    sa.Column('resolved_at', UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_inbox'))
    )
    op.create_index(op.f('ix_orders_inbox_reason'), 'orders_inbox', ['reason'], unique=False)
    op.create_index(op.f('ix_orders_inbox_received_at'), 'orders_inbox', ['received_at'], unique=False)
    op.create_index(op.f('ix_orders_inbox_status'), 'orders_inbox', ['status'], unique=False)
    op.create_table('orders_movements',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('on_hand_delta', sa.Integer(), nullable=False),
    sa.Column('reserved_delta', sa.Integer(), nullable=False),
    sa.Column('on_hand_after', sa.Integer(), nullable=False),
    sa.Column('reserved_after', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('pos_session', sa.BigInteger(), nullable=True),
    sa.Column('pos_seq', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_movements'))
    )
    op.create_index('ix_orders_movements_loc_sku', 'orders_movements', ['location_id', 'sku'], unique=False)
    op.create_table('orders_rulesets',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=120), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_orders_rulesets'))
    )
    op.create_table('orders_locations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('node', sa.String(length=63), nullable=True),
    sa.Column('region', sa.String(length=32), nullable=True),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lon', sa.Float(), nullable=False),
    sa.Column('zone_radius_km', sa.Float(), nullable=True),
    sa.Column('zone_polygon', sa.JSON(), nullable=True),
    sa.Column('capacity_per_day', sa.Integer(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('cost', sa.Float(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_orders_locations_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_locations')),
    sa.UniqueConstraint('code', name=op.f('uq_orders_locations_code')),
    sa.UniqueConstraint('store_id', name=op.f('uq_orders_locations_store_id'))
    )
    op.create_table('orders_orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=False),
    sa.Column('channel_order_id', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('fulfilment', sa.String(length=10), nullable=False),
    sa.Column('customer', sa.String(length=200), nullable=True),
    sa.Column('contact', sa.String(length=200), nullable=True),
    sa.Column('address', sa.String(length=500), nullable=True),
    sa.Column('lat', sa.Float(), nullable=True),
    sa.Column('lon', sa.Float(), nullable=True),
    sa.Column('pickup_location_id', sa.Integer(), nullable=True),
    sa.Column('pickup_code', sa.String(length=16), nullable=True),
    sa.Column('amount', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('source_node', sa.String(length=63), nullable=True),
    sa.Column('region', sa.String(length=32), nullable=True),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('updated_at', UtcDateTime(), nullable=False),
    sa.Column('route_after', UtcDateTime(), nullable=True),
    sa.Column('queued_since', UtcDateTime(), nullable=True),
    sa.Column('merged_with', sa.BigInteger(), nullable=True),
    sa.Column('excluded', sa.JSON(), nullable=True),
    sa.Column('carrier', sa.String(length=200), nullable=True),
    sa.Column('tracking', sa.String(length=200), nullable=True),
    sa.Column('raw', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['pickup_location_id'], ['orders_locations.id'], name=op.f('fk_orders_orders_pickup_location_id_orders_locations')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_orders')),
    sa.UniqueConstraint('channel', 'channel_order_id', name=op.f('uq_orders_orders_channel_channel_order_id'))
    )
    op.create_index(op.f('ix_orders_orders_created_at'), 'orders_orders', ['created_at'], unique=False)
    op.create_index(op.f('ix_orders_orders_region'), 'orders_orders', ['region'], unique=False)
    op.create_index(op.f('ix_orders_orders_state'), 'orders_orders', ['state'], unique=False)
    op.create_index('ix_orders_orders_state_route_after', 'orders_orders', ['state', 'route_after'], unique=False)
    op.create_index(op.f('ix_orders_orders_store_id'), 'orders_orders', ['store_id'], unique=False)
    op.create_table('orders_stock',
    sa.Column('location_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('on_hand', sa.Integer(), nullable=False),
    sa.Column('reserved', sa.Integer(), nullable=False),
    sa.Column('safety', sa.Integer(), nullable=False),
    sa.Column('min_level', sa.Integer(), nullable=True),
    sa.Column('pos_session', sa.BigInteger(), nullable=True),
    sa.Column('pos_seq', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', UtcDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['location_id'], ['orders_locations.id'], name=op.f('fk_orders_stock_location_id_orders_locations')),
    sa.PrimaryKeyConstraint('location_id', 'sku', name=op.f('pk_orders_stock'))
    )
    op.create_index('ix_orders_stock_sku', 'orders_stock', ['sku'], unique=False)
    op.create_table('orders_assignments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('lines', sa.JSON(), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('accept_by', UtcDateTime(), nullable=True),
    sa.Column('command', sa.Uuid(), nullable=True),
    sa.Column('pos_session', sa.BigInteger(), nullable=True),
    sa.Column('pos_seq', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['location_id'], ['orders_locations.id'], name=op.f('fk_orders_assignments_location_id_orders_locations')),
    sa.ForeignKeyConstraint(['order_id'], ['orders_orders.id'], name=op.f('fk_orders_assignments_order_id_orders_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_assignments'))
    )
    op.create_index(op.f('ix_orders_assignments_accept_by'), 'orders_assignments', ['accept_by'], unique=False)
    op.create_index(op.f('ix_orders_assignments_location_id'), 'orders_assignments', ['location_id'], unique=False)
    op.create_index(op.f('ix_orders_assignments_order_id'), 'orders_assignments', ['order_id'], unique=False)
    op.create_table('orders_decisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('ruleset_version', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=20), nullable=False),
    sa.Column('rule', sa.String(length=100), nullable=True),
    sa.Column('explanation', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders_orders.id'], name=op.f('fk_orders_decisions_order_id_orders_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_decisions'))
    )
    op.create_index(op.f('ix_orders_decisions_order_id'), 'orders_decisions', ['order_id'], unique=False)
    op.create_table('orders_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('line_no', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('price', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('discount', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders_orders.id'], name=op.f('fk_orders_lines_order_id_orders_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_lines')),
    sa.UniqueConstraint('order_id', 'line_no', name=op.f('uq_orders_lines_order_id_line_no'))
    )
    op.create_index(op.f('ix_orders_lines_order_id'), 'orders_lines', ['order_id'], unique=False)
    op.create_table('orders_transitions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('from_state', sa.String(length=20), nullable=True),
    sa.Column('to_state', sa.String(length=20), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('actor', sa.String(length=120), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders_orders.id'], name=op.f('fk_orders_transitions_order_id_orders_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_transitions'))
    )
    op.create_index(op.f('ix_orders_transitions_order_id'), 'orders_transitions', ['order_id'], unique=False)
    op.create_table('orders_reservations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('assignment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.BigInteger(), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=64), nullable=False),
    sa.Column('qty', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['assignment_id'], ['orders_assignments.id'], name=op.f('fk_orders_reservations_assignment_id_orders_assignments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders_reservations'))
    )
    op.create_index(op.f('ix_orders_reservations_assignment_id'), 'orders_reservations', ['assignment_id'], unique=False)
    op.create_index(op.f('ix_orders_reservations_order_id'), 'orders_reservations', ['order_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_orders_reservations_order_id'), table_name='orders_reservations')
    op.drop_index(op.f('ix_orders_reservations_assignment_id'), table_name='orders_reservations')
    op.drop_table('orders_reservations')
    op.drop_index(op.f('ix_orders_transitions_order_id'), table_name='orders_transitions')
    op.drop_table('orders_transitions')
    op.drop_index(op.f('ix_orders_lines_order_id'), table_name='orders_lines')
    op.drop_table('orders_lines')
    op.drop_index(op.f('ix_orders_decisions_order_id'), table_name='orders_decisions')
    op.drop_table('orders_decisions')
    op.drop_index(op.f('ix_orders_assignments_order_id'), table_name='orders_assignments')
    op.drop_index(op.f('ix_orders_assignments_location_id'), table_name='orders_assignments')
    op.drop_index(op.f('ix_orders_assignments_accept_by'), table_name='orders_assignments')
    op.drop_table('orders_assignments')
    op.drop_index('ix_orders_stock_sku', table_name='orders_stock')
    op.drop_table('orders_stock')
    op.drop_index(op.f('ix_orders_orders_store_id'), table_name='orders_orders')
    op.drop_index('ix_orders_orders_state_route_after', table_name='orders_orders')
    op.drop_index(op.f('ix_orders_orders_state'), table_name='orders_orders')
    op.drop_index(op.f('ix_orders_orders_region'), table_name='orders_orders')
    op.drop_index(op.f('ix_orders_orders_created_at'), table_name='orders_orders')
    op.drop_table('orders_orders')
    op.drop_table('orders_locations')
    op.drop_table('orders_rulesets')
    op.drop_index('ix_orders_movements_loc_sku', table_name='orders_movements')
    op.drop_table('orders_movements')
    op.drop_index(op.f('ix_orders_inbox_status'), table_name='orders_inbox')
    op.drop_index(op.f('ix_orders_inbox_received_at'), table_name='orders_inbox')
    op.drop_index(op.f('ix_orders_inbox_reason'), table_name='orders_inbox')
    op.drop_table('orders_inbox')
    op.drop_index('ix_orders_feed_due', table_name='orders_feed')
    op.drop_table('orders_feed')
    op.drop_table('orders_channels')
