"""The shopper's pickup slip for an order placed at the kiosk, as ESC/POS bytes (python-escpos).

Printed on the store's receipt printer through the station's durable print queue when a kiosk
pickup order is placed. It carries the order number, what was ordered, where to collect it and a
QR code of the confirmation link; never a pickup code: the cloud makes that secret when it takes
the order and sends it to the shopper's phone, and a box only ever holds its hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["render_pickup_slip"]

_ESCPOS_PROFILE = {"escpos-80mm": "TM-T88V", "escpos-58mm": "TM-P20"}
_WIDTH = {"escpos-58mm": 32}


def _ascii(text: str) -> str:
    # The printer's code pages have no Chinese: names print in English; anything else as '?'.
    return text.encode("ascii", "replace").decode()


def render_pickup_slip(order: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], *, store: str, pickup: str,
                       pickup_name: str | None, confirm_url: str, profile: str, when: datetime) -> bytes:
    """`lines`: {"sku", "qty", "price", "name_en"}; `order`: {"order_id", "total"}."""
    from escpos.printer import Dummy

    width = _WIDTH.get(profile, 42)
    p = Dummy(profile=_ESCPOS_PROFILE.get(profile, "TM-T88V"))
    p.set(align="center", bold=True, double_height=True, double_width=True)
    p.text("PICKUP ORDER\n")
    p.text(f"{_ascii(str(order['order_id']))}\n")
    p.set(align="left", normal_textsize=True)
    p.text(f"Placed at the cloud shelf, store {_ascii(store)}   {when.strftime('%Y-%m-%d %H:%M')}\n")
    where = f"{pickup_name} ({pickup})" if pickup_name else pickup
    p.text(f"Collect at: {_ascii(where)}\n")
    p.text("-" * width + "\n")
    for ln in lines:
        price = f"{float(ln['price'] or 0) * int(ln['qty']):.2f}"
        head = f"{int(ln['qty']):>3} x {_ascii(str(ln['sku']))}"
        p.text(f"{head}{price:>{max(1, width - len(head))}}\n")
        if ln.get("name_en"):
            p.text(f"      {_ascii(str(ln['name_en']))[:width - 6]}\n")
    p.text("-" * width + "\n")
    total = f"{float(order.get('total') or 0):.2f}"
    p.text(f"Total{total:>{width - 5}}\n\n")
    p.text("Your pickup code comes with the order's confirmation:\nscan this code with your phone.\n")
    p.qr(confirm_url, native=True, size=5)
    p.cut()
    return bytes(p.output)
