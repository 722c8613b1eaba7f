"""The order desk's slips as ESC/POS bytes (python-escpos): the pick list when staff accept an
assignment, the packing slip when they pack it, the pickup slip when it is ready for pickup.

Rendered for the printer's profile when queued; the station's durable print queue sends them.
The shopper's pickup code is not on any slip: the box only holds its hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["SLIPS", "render_slip"]

_ESCPOS_PROFILE = {"escpos-80mm": "TM-T88V", "escpos-58mm": "TM-P20"}

SLIPS: dict[str, tuple[str, str]] = {
    # step: (job kind, title)
    "accept": ("pick_list", "PICK LIST"),
    "pack": ("packing_slip", "PACKING SLIP"),
    "ready": ("pickup_slip", "PICKUP"),
}
"""The steps that print, and what."""


def render_slip(step: str, assignment: Mapping[str, Any], *, profile: str, when: datetime) -> bytes:
    """The slip of `step` for `assignment` (as the desk's API shows it)."""
    from escpos.printer import Dummy

    _, title = SLIPS[step]
    p = Dummy(profile=_ESCPOS_PROFILE.get(profile, "TM-T88V"))
    p.set(align="center", bold=True, double_height=True, double_width=True)
    p.text(f"{title}\n")
    p.text(f"Order {assignment['order_id']}\n")
    p.set(align="left", normal_textsize=True)
    p.text(f"Assignment {assignment['assignment']}   {when.strftime('%Y-%m-%d %H:%M')}\n")
    if assignment.get("channel"):
        p.text(f"Channel {assignment['channel']}   {assignment.get('fulfilment') or ''}\n")
    if step == "accept" and assignment.get("accept_by"):
        p.text(f"Accept by {assignment['accept_by']}\n")
    p.text("-" * 32 + "\n")
    for line in assignment.get("lines", []):
        p.text(f"{line['qty']:>4} x {line['sku']}\n")
    p.text("-" * 32 + "\n")
    for label, key in (("Customer", "customer"), ("Contact", "contact")):
        if assignment.get(key):
            p.text(f"{label} {assignment[key]}\n")
    if step == "pack" and assignment.get("address"):
        p.text(f"Deliver to {assignment['address']}\n")
    if step == "ready":
        p.text("Hand over only against the shopper's pickup code.\n")
    p.qr(f"omnishelf:assignment:{assignment['assignment']}", native=True, size=4)
    p.cut()
    return bytes(p.output)
