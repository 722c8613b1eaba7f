"""Signage for `omnishelf demo`: two generated pictures, a default playlist, an always-on campaign
with a share-of-voice spot, an evening campaign for the east region, published to the demo boxes.
Idempotent: run at every demo start, it publishes only when nothing is published yet."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw
from sqlalchemy import Engine

from cloud.access.scope import Principal, Role, Scope
from cloud.access.service import write_session
from cloud.signage import service
from cloud.signage.media import MediaStore

__all__ = ["setup"]

DEMO = Principal(kind="cli", id=0, name="demo", role=Role.ADMIN, scope=Scope(all=True))


def _card(colour: str, text: str) -> bytes:
    img = Image.new("RGB", (960, 540), colour)
    ImageDraw.Draw(img).text((40, 40), text, fill="white")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def setup(engine: Engine, media_dir: Path) -> int | None:
    """Publish the demo's signage; return the version published (None: already there)."""
    store = MediaStore(media_dir)
    with write_session(engine) as s, s.begin():
        if service.current_publication(s) is not None:
            return None
        house = service.upload_media(s, DEMO, store, "house.png", _card("#1f2937", "omnishelf: welcome")).sha256
        tea = service.upload_media(s, DEMO, store, "tea.png", _card("#166534", "Longjing tea: new harvest")).sha256
        spot = service.upload_media(s, DEMO, store, "spot.png", _card("#b91c1c", "Members: double points")).sha256
        service.create_playlist(s, DEMO, "house", [{"media": house, "duration_s": 10}], is_default=True)
        service.create_playlist(s, DEMO, "tea", [{"media": tea, "duration_s": 8}, {"media": house, "duration_s": 4}])
        service.create_playlist(s, DEMO, "spot", [{"media": spot, "duration_s": 5}])
        service.save_campaign(s, DEMO, service.CampaignIn(id="tea-harvest", name="Tea harvest", layer="normal",
                                                          playlist="tea", regions=("east",)))
        service.save_campaign(s, DEMO, service.CampaignIn(id="members", name="Members spot", layer="interrupt",
                                                          playlist="spot", sov_s=60))
        service.save_campaign(s, DEMO, service.CampaignIn(
            id="evening", name="Evening offer", layer="normal", playlist="spot", priority=1, regions=("south",),
            dayparts=({"weekdays": [0, 1, 2, 3, 4, 5, 6], "start": "18:00", "end": "22:00"},)))
        return service.publish(s, DEMO, "demo").version
