"""Tables of cloud.signage (all prefixed `signage_`).

Drafts are the campaign and playlist rows HQ edits; a publication freezes them into `rules` (the
exact document the boxes get, media resolved), so what was on air at any version can be shown
and re-published (rollback) whatever was edited since.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud.models import Base, BigId, UtcDateTime

__all__ = ["Campaign", "Media", "Play", "PlayDropped", "Playlist", "Publication", "ScreenState"]


class Media(Base):
    """A checked image or video, stored by content hash in the signage file store."""

    __tablename__ = "signage_media"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))
    """image or video"""
    mime: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column(Float)
    """A video's own length (read with OpenCV); None for an image."""
    thumb_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200))


class Playlist(Base):
    __tablename__ = "signage_playlists"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """[{"media": sha256, "duration_s": seconds}] in order (a video's duration is its own length)."""
    is_default: Mapped[bool] = mapped_column(Boolean, server_default=false())
    """The playlist a screen shows when no campaign is active (at most one)."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Campaign(Base):
    """A draft campaign; only a publication puts it on air."""

    __tablename__ = "signage_campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    layer: Mapped[str] = mapped_column(String(16))
    """override, normal or interrupt"""
    priority: Mapped[int] = mapped_column(Integer, default=0)
    playlist_id: Mapped[int] = mapped_column(ForeignKey("signage_playlists.id"), index=True)
    start_date: Mapped[date | None] = mapped_column(Date)
    end_date: Mapped[date | None] = mapped_column(Date)
    dayparts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """[{"weekdays": [0..6], "start": "HH:MM", "end": "HH:MM"}]; empty: all day."""
    regions: Mapped[list[str]] = mapped_column(JSON)
    stores: Mapped[list[str]] = mapped_column(JSON)
    tags: Mapped[list[str]] = mapped_column(JSON)
    sov_s: Mapped[int] = mapped_column(Integer, default=0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    """False: left out of the next publication (unpublished), kept as a draft."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_by: Mapped[str] = mapped_column(String(200))


class Publication(Base):
    __tablename__ = "signage_publications"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    """{"campaigns": [...targeting included...], "default": [...]} exactly as published."""
    rules_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    rollback_of: Mapped[int | None] = mapped_column(Integer)
    """Set when this publication re-published an older version's rules."""


class ScreenState(Base):
    """Per screen of a box (most have one, `main`): its tags, the schedule last sent to it and the
    one it says it plays."""

    __tablename__ = "signage_screens"

    node: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    screen: Mapped[str] = mapped_column(String(200), primary_key=True, default="main")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    sent_version: Mapped[int | None] = mapped_column(Integer)
    sent_hash: Mapped[str | None] = mapped_column(String(32))
    sent_from: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """valid_from of the schedule last sent (the refresher rolls the window forward)."""
    sent_msg_id: Mapped[str | None] = mapped_column(String(36))
    playing_version: Mapped[int | None] = mapped_column(Integer)
    playing_hash: Mapped[str | None] = mapped_column(String(32))
    playing_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    refused: Mapped[str | None] = mapped_column(Text)
    """The box's reason, when it refused the last schedule."""


class Play(Base):
    """One proof-of-play record, stored once (its bus message id is the key)."""

    __tablename__ = "signage_plays"
    __table_args__ = (Index("ix_signage_plays_node_started", "node", "started_at"),)

    msg_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(63))
    screen: Mapped[str] = mapped_column(String(200))
    store_id: Mapped[int | None] = mapped_column(Integer, index=True)
    region_id: Mapped[int | None] = mapped_column(Integer)
    campaign: Mapped[str | None] = mapped_column(String(64), index=True)
    media: Mapped[str] = mapped_column(String(64))
    layer: Mapped[str] = mapped_column(String(16))
    schedule_version: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    day: Mapped[str] = mapped_column(String(10), index=True)
    """Store-local date of the start (YYYY-MM-DD): reports by day are by the store's day."""


class PlayDropped(Base):
    """Proof-of-play records refused as implausible, counted per box and reason."""

    __tablename__ = "signage_plays_dropped"
    __table_args__ = (UniqueConstraint("node", "reason"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node: Mapped[str] = mapped_column(String(63))
    reason: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_at: Mapped[datetime] = mapped_column(UtcDateTime)
