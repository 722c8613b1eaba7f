"""Traceability (cloud.trace): locations, units, cases, EPCIS events, captures, scans, recalls,
alerts, registrations; the downlink's `corr` (a command that answers a message names it).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from cloud.models import UtcDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
compatible = True
"""An expand step: new tables and one new nullable column."""


def upgrade() -> None:
    op.create_table('trace_alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('code', sa.String(length=1024), nullable=False),
    sa.Column('gtin', sa.String(length=14), nullable=True),
    sa.Column('serial', sa.String(length=20), nullable=True),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('scan_id', sa.BigInteger(), nullable=True),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('acked_at', UtcDateTime(), nullable=True),
    sa.Column('acked_by', sa.String(length=80), nullable=True),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_alerts'))
    )
    with op.batch_alter_table('trace_alerts', schema=None) as batch_op:
        batch_op.create_index('ix_trace_alerts_at', ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_alerts_gtin'), ['gtin'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_alerts_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_alerts_region_id'), ['region_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_alerts_store_id'), ['store_id'], unique=False)

    op.create_table('trace_captures',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('stored', sa.Integer(), nullable=False),
    sa.Column('errors', sa.JSON(), nullable=True),
    sa.Column('actor', sa.String(length=80), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.Column('finished_at', UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_captures'))
    )
    op.create_table('trace_cases',
    sa.Column('sscc', sa.String(length=18), nullable=False),
    sa.Column('parent', sa.String(length=18), nullable=True),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('sscc', name=op.f('pk_trace_cases'))
    )
    op.create_table('trace_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('hash', sa.String(length=100), nullable=False),
    sa.Column('type', sa.String(length=24), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=True),
    sa.Column('event_time', UtcDateTime(), nullable=False),
    sa.Column('tz_offset', sa.String(length=6), nullable=False),
    sa.Column('biz_step', sa.String(length=100), nullable=True),
    sa.Column('disposition', sa.String(length=100), nullable=True),
    sa.Column('biz_location', sa.String(length=200), nullable=True),
    sa.Column('read_point', sa.String(length=200), nullable=True),
    sa.Column('capture_id', sa.Uuid(), nullable=True),
    sa.Column('recorded_at', UtcDateTime(), nullable=False),
    sa.Column('doc', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_trace_events_event_id')),
    sa.UniqueConstraint('hash', name=op.f('uq_trace_events_hash'))
    )
    with op.batch_alter_table('trace_events', schema=None) as batch_op:
        batch_op.create_index('ix_trace_events_loc', ['biz_location'], unique=False)
        batch_op.create_index('ix_trace_events_step', ['biz_step'], unique=False)
        batch_op.create_index('ix_trace_events_time', ['event_time'], unique=False)

    op.create_table('trace_recalls',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gtin', sa.String(length=14), nullable=False),
    sa.Column('batch', sa.String(length=20), nullable=True),
    sa.Column('serial', sa.String(length=20), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('actor', sa.String(length=80), nullable=False),
    sa.Column('created_at', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_recalls'))
    )
    with op.batch_alter_table('trace_recalls', schema=None) as batch_op:
        batch_op.create_index('ix_trace_recalls_key', ['gtin', 'batch'], unique=False)

    op.create_table('trace_registrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('gtin', sa.String(length=14), nullable=False),
    sa.Column('serial', sa.String(length=20), nullable=False),
    sa.Column('contact', sa.String(length=200), nullable=False),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_registrations')),
    sa.UniqueConstraint('gtin', 'serial', name=op.f('uq_trace_registrations_gtin_serial'))
    )
    op.create_table('trace_scans',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('msg_id', sa.Uuid(), nullable=False),
    sa.Column('node', sa.String(length=63), nullable=True),
    sa.Column('station', sa.String(length=200), nullable=False),
    sa.Column('purpose', sa.String(length=8), nullable=False),
    sa.Column('code', sa.String(length=1024), nullable=False),
    sa.Column('gtin', sa.String(length=14), nullable=True),
    sa.Column('serial', sa.String(length=20), nullable=True),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('at', UtcDateTime(), nullable=False),
    sa.Column('verdict', sa.String(length=32), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('provisional', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_scans')),
    sa.UniqueConstraint('msg_id', name=op.f('uq_trace_scans_msg_id'))
    )
    with op.batch_alter_table('trace_scans', schema=None) as batch_op:
        batch_op.create_index('ix_trace_scans_at', ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_scans_node'), ['node'], unique=False)

    op.create_table('trace_units',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('gtin', sa.String(length=14), nullable=False),
    sa.Column('serial', sa.String(length=20), nullable=False),
    sa.Column('batch', sa.String(length=20), nullable=True),
    sa.Column('expiry', sa.Date(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('location_id', sa.Integer(), nullable=True),
    sa.Column('received_at_store', sa.Boolean(), nullable=False),
    sa.Column('parent', sa.String(length=18), nullable=True),
    sa.Column('ship_dest_id', sa.Integer(), nullable=True),
    sa.Column('ship_region_id', sa.Integer(), nullable=True),
    sa.Column('seen_location_id', sa.Integer(), nullable=True),
    sa.Column('seen_at', UtcDateTime(), nullable=True),
    sa.Column('last_scan_id', sa.BigInteger(), nullable=True),
    sa.Column('sold_at', UtcDateTime(), nullable=True),
    sa.Column('sold_location_id', sa.Integer(), nullable=True),
    sa.Column('sold_node', sa.String(length=63), nullable=True),
    sa.Column('sold_session', sa.BigInteger(), nullable=True),
    sa.Column('sold_seq', sa.BigInteger(), nullable=True),
    sa.Column('recalled', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_units')),
    sa.UniqueConstraint('gtin', 'serial', name=op.f('uq_trace_units_gtin_serial'))
    )
    with op.batch_alter_table('trace_units', schema=None) as batch_op:
        batch_op.create_index('ix_trace_units_parent', ['parent'], unique=False)

    op.create_table('trace_event_epcs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('epc', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=8), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['trace_events.id'], name=op.f('fk_trace_event_epcs_event_id_trace_events')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_event_epcs'))
    )
    with op.batch_alter_table('trace_event_epcs', schema=None) as batch_op:
        batch_op.create_index('ix_trace_event_epcs_epc', ['epc', 'event_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_trace_event_epcs_event_id'), ['event_id'], unique=False)

    op.create_table('trace_locations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('gln', sa.String(length=13), nullable=True),
    sa.Column('region_id', sa.Integer(), nullable=True),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lon', sa.Float(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['region_id'], ['regions.id'], name=op.f('fk_trace_locations_region_id_regions')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_trace_locations_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trace_locations')),
    sa.UniqueConstraint('code', name=op.f('uq_trace_locations_code')),
    sa.UniqueConstraint('gln', name=op.f('uq_trace_locations_gln')),
    sa.UniqueConstraint('store_id', name=op.f('uq_trace_locations_store_id'))
    )
    with op.batch_alter_table('trace_locations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trace_locations_region_id'), ['region_id'], unique=False)

    with op.batch_alter_table('downlink', schema=None) as batch_op:
        batch_op.add_column(sa.Column('corr', sa.Uuid(), nullable=True))


def downgrade() -> None:

    with op.batch_alter_table('downlink', schema=None) as batch_op:
        batch_op.drop_column('corr')

    with op.batch_alter_table('trace_locations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trace_locations_region_id'))

    op.drop_table('trace_locations')
    with op.batch_alter_table('trace_event_epcs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trace_event_epcs_event_id'))
        batch_op.drop_index('ix_trace_event_epcs_epc')

    op.drop_table('trace_event_epcs')
    with op.batch_alter_table('trace_units', schema=None) as batch_op:
        batch_op.drop_index('ix_trace_units_parent')

    op.drop_table('trace_units')
    with op.batch_alter_table('trace_scans', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trace_scans_node'))
        batch_op.drop_index('ix_trace_scans_at')

    op.drop_table('trace_scans')
    op.drop_table('trace_registrations')
    with op.batch_alter_table('trace_recalls', schema=None) as batch_op:
        batch_op.drop_index('ix_trace_recalls_key')

    op.drop_table('trace_recalls')
    with op.batch_alter_table('trace_events', schema=None) as batch_op:
        batch_op.drop_index('ix_trace_events_time')
        batch_op.drop_index('ix_trace_events_step')
        batch_op.drop_index('ix_trace_events_loc')

    op.drop_table('trace_events')
    op.drop_table('trace_cases')
    op.drop_table('trace_captures')
    with op.batch_alter_table('trace_alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trace_alerts_store_id'))
        batch_op.drop_index(batch_op.f('ix_trace_alerts_region_id'))
        batch_op.drop_index(batch_op.f('ix_trace_alerts_kind'))
        batch_op.drop_index(batch_op.f('ix_trace_alerts_gtin'))
        batch_op.drop_index('ix_trace_alerts_at')

    op.drop_table('trace_alerts')
