"""The kiosk's view-models: one per screen plus the shopper's session, as Kivy properties.

Views (the `.kv` files) bind to these and call their methods; these talk to the box only through
a `BoxClient` run by a `Worker` (off the UI thread, results back on Kivy's clock). Nothing here
draws, so all of it is tested without a screen.

Messages shown to the shopper are English msgids with `{}` fields, translated by the view through
the one gettext catalogue (`kiosk.i18n`): a view-model never holds text in one language.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kivy.event import EventDispatcher
from kivy.properties import (
    BooleanProperty,
    DictProperty,
    ListProperty,
    NumericProperty,
    ObjectProperty,
    OptionProperty,
    StringProperty,
)

from kiosk.client import BoxClient
from kiosk.work import Worker

__all__ = [
    "PRICE_BANDS",
    "AttractVM",
    "BrowseVM",
    "CheckoutVM",
    "ConfirmVM",
    "Line",
    "ProductVM",
    "SessionVM",
    "availability_lines",
]

Line = dict[str, Any]
"""A message for the view: {"msg": English msgid with {fields}, "args": {field: value}}."""

PAGE = 40
PRICE_BANDS: tuple[tuple[str, int | None, int | None], ...] = (
    ("Any price", None, None), ("Under ¥50", None, 50), ("¥50-200", 50, 200), ("Over ¥200", 200, None))
_PHONE = re.compile(r"\+?[0-9][0-9 \-]{5,19}")


def line(msg: str, **args: Any) -> Line:
    return {"msg": msg, "args": args}


def money(value: Any) -> str:
    try:
        return f"¥{float(value):,.2f}"
    except (TypeError, ValueError):
        return "—"


class SessionVM(EventDispatcher):  # type: ignore[misc]
    """The shopper's session: basket, language, reach mode, and the idle reset.

    `tick()` is called once a second; after `idle_s` without a touch `countdown` counts down from
    `countdown_s` (shown on screen), and at 0 the session is wiped and `on_reset` fires."""

    basket = ListProperty()
    lang = OptionProperty("zh", options=["zh", "en"])
    reach = BooleanProperty(False)
    idle = NumericProperty(0)
    countdown = NumericProperty(-1)
    """-1: no countdown shown."""
    active = BooleanProperty(False)
    """A shopper is using the kiosk (False: the attract loop)."""
    count = NumericProperty(0)
    total = NumericProperty(0.0)
    resets = NumericProperty(0)

    __events__ = ("on_reset",)

    def __init__(self, idle_s: float = 90, countdown_s: int = 15, **kw: Any) -> None:
        super().__init__(**kw)
        self.idle_s = idle_s
        self.countdown_s = countdown_s

    def on_basket(self, _inst: Any, basket: list[dict[str, Any]]) -> None:
        self.count = sum(int(i["qty"]) for i in basket)
        self.total = round(sum(float(i.get("price") or 0) * int(i["qty"]) for i in basket), 2)

    def add(self, item: dict[str, Any], qty: int = 1) -> None:
        for i, held in enumerate(self.basket):
            if held["sku"] == item["sku"]:
                self.set_qty(i, int(held["qty"]) + qty)
                return
        self.basket = [*self.basket, {"sku": item["sku"], "name_en": item.get("name_en", ""),
                                      "name_zh": item.get("name_zh", ""), "price": item.get("price"),
                                      "thumb": item.get("thumb"), "qty": max(1, min(99, qty))}]

    def set_qty(self, index: int, qty: int) -> None:
        items = [dict(i) for i in self.basket]
        if qty <= 0:
            del items[index]
        else:
            items[index]["qty"] = min(99, qty)
        self.basket = items

    def touched(self) -> None:
        self.idle = 0
        self.countdown = -1
        if not self.active:
            self.active = True

    def tick(self, seconds: float = 1.0) -> None:
        if not self.active:
            return
        self.idle += seconds
        if self.idle < self.idle_s:
            return
        left = self.countdown_s - int(self.idle - self.idle_s)
        if left <= 0:
            self.wipe()
        else:
            self.countdown = left

    def wipe(self) -> None:
        """Everything the shopper chose or typed goes; the attract loop resumes."""
        self.basket = []
        self.reach = False
        self.idle = 0
        self.countdown = -1
        self.active = False
        self.resets += 1
        self.dispatch("on_reset")

    def on_reset(self) -> None:
        pass


class AttractVM(EventDispatcher):  # type: ignore[misc]
    """What the store's screens play now (the signage player), shown full screen behind "touch to start".

    The box plays the timeline; the kiosk asks it what plays now and shows that file, fetched from
    the box's verified media cache (`GET /signage/media/{sha256}`) and decoded off the UI thread.
    A file the box has not got yet leaves the previous one (or the welcome) on screen."""

    playing = StringProperty("")
    campaign = StringProperty("")
    error = StringProperty("")
    media = StringProperty("")
    """The sha256 of the file on screen ("" : the welcome)."""
    kind = OptionProperty("", options=["", "image", "video"])
    picture = ObjectProperty(None, allownone=True)
    """The decoded image (kind "image"), ready to become a texture on the UI thread."""
    video = StringProperty("")
    """A local copy of the video file (kind "video"), for a video player to open."""
    shown = NumericProperty(0)
    """Files put on screen (tests wait on it)."""

    def __init__(self, client: BoxClient, worker: Worker, decode: Callable[[bytes, str], Any] | None = None,
                 media_dir: Path | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.client, self.worker = client, worker
        self._decode = decode
        self._media_dir = media_dir
        self._fetching = ""

    def poll(self) -> None:
        self.worker.run(self.client.now_playing, self._done, self._failed, key="attract")

    def _done(self, now: dict[str, Any]) -> None:
        cur = now.get("now") if isinstance(now, dict) else None
        self.error = ""
        sha = str(cur.get("media") or "") if isinstance(cur, dict) else ""
        self.playing = sha[:12]
        self.campaign = str(cur.get("campaign") or "") if isinstance(cur, dict) else ""
        if not sha:
            self._show("", "", None, "")
        elif sha != self.media and sha != self._fetching:
            self._fetching = sha
            self.worker.run(lambda: self._fetch(sha), self._fetched, self._media_failed, key="attract-media")

    def _fetch(self, sha: str) -> tuple[str, str, Any, str]:
        """(sha, kind, decoded picture, video path): runs on a worker thread."""
        data, mime = self.client.media(sha)
        if mime.startswith("image/"):
            picture = self._decode(data, f"signage media {sha}") if self._decode is not None else None
            if picture is None:
                raise ValueError(f"signage media {sha[:12]} ({mime}) could not be decoded")
            return sha, "image", picture, ""
        if mime.startswith("video/"):
            directory = self._media_dir or Path(tempfile.gettempdir()) / "omnishelf-kiosk-media"
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{sha}.{mime.split('/')[1].split(';')[0] or 'bin'}"
            if not path.exists():
                part = path.with_suffix(".part")
                part.write_bytes(data)
                part.replace(path)
            return sha, "video", None, str(path)
        raise ValueError(f"signage media {sha[:12]} is {mime}: the attract loop shows images and videos")

    def _fetched(self, got: tuple[str, str, Any, str]) -> None:
        sha, kind, picture, video = got
        self._fetching = ""
        self._show(sha, kind, picture, video)

    def _show(self, sha: str, kind: str, picture: Any, video: str) -> None:
        if sha == self.media:
            return
        self.media, self.picture, self.video, self.kind = sha, picture, video, kind
        self.shown += 1

    def _media_failed(self, msg: str) -> None:
        # Not on the box yet (still downloading) or unreadable: what is on screen stays; the next poll tries again.
        self._fetching = ""
        self.error = msg

    def _failed(self, _msg: str) -> None:
        # A box without a signage player still has an attract screen: it just plays nothing.
        self.playing, self.campaign = "", ""


class BrowseVM(EventDispatcher):  # type: ignore[misc]
    """The grid: instant search as the shopper types, categories, filters, paging as they scroll."""

    query = StringProperty("")
    category = StringProperty("")
    categories = ListProperty()
    in_stock = BooleanProperty(False)
    price_band = NumericProperty(0)
    items = ListProperty()
    total = NumericProperty(0)
    loading = BooleanProperty(False)
    error = StringProperty("")
    loads = NumericProperty(0)
    """Answers applied (tests wait on it)."""

    __events__ = ("on_page",)

    def __init__(self, client: BoxClient, worker: Worker, **kw: Any) -> None:
        super().__init__(**kw)
        self.client, self.worker = client, worker

    def on_page(self, rows: list[dict[str, Any]], replace: bool) -> None:
        """A page arrived: the grid replaces its rows with it, or appends it (no full refresh)."""

    # typing on the on-screen keyboard
    def key(self, ch: str) -> None:
        if len(self.query) < 60:
            self.query += ch
            self.load()

    def backspace(self) -> None:
        if self.query:
            self.query = self.query[:-1]
            self.load()

    def clear(self) -> None:
        if self.query:
            self.query = ""
            self.load()

    def set_category(self, path: str) -> None:
        self.category = "" if path == self.category else path
        self.load()

    def toggle_in_stock(self) -> None:
        self.in_stock = not self.in_stock
        self.load()

    def set_price_band(self, index: int) -> None:
        self.price_band = index
        self.load()

    def reset(self) -> None:
        self.query, self.category, self.in_stock, self.price_band = "", "", False, 0
        self.items, self.total, self.error = [], 0, ""
        self.load()

    def load_categories(self) -> None:
        def done(cats: list[dict[str, Any]]) -> None:
            # Top level only: the chips row stays short; deeper levels narrow by prefix anyway.
            tops: dict[str, int] = {}
            for c in cats:
                if isinstance(c, dict) and isinstance(c.get("path"), str):
                    top = c["path"].split(" > ")[0]
                    tops[top] = tops.get(top, 0) + int(c.get("products") or 0)
            self.categories = [{"path": k, "products": v} for k, v in sorted(tops.items())]

        self.worker.run(self.client.categories, done, self._failed, key="categories")

    def _fetch(self, offset: int) -> Callable[[], dict[str, Any]]:
        _, lo, hi = PRICE_BANDS[int(self.price_band)]
        q, cat, stock = self.query, self.category or None, self.in_stock
        return lambda: self.client.products(q=q, category=cat, min_price=lo, max_price=hi, in_stock=stock,
                                            limit=PAGE, offset=offset)

    def load(self) -> None:
        """The first page for the current query and filters (an older answer in flight is dropped)."""
        self.loading = True
        self.worker.run(self._fetch(0), lambda page: self._apply(page, replace=True), self._failed, key="browse",
                        latest_only=True)

    def load_more(self) -> None:
        if self.loading or len(self.items) >= self.total:
            return
        self.loading = True
        self.worker.run(self._fetch(len(self.items)), lambda page: self._apply(page, replace=False), self._failed,
                        key="browse")

    def _apply(self, page: dict[str, Any], *, replace: bool) -> None:
        good = [i for i in page.get("items", []) if isinstance(i, dict) and isinstance(i.get("sku"), str)]
        rows = [{"sku": i["sku"], "name_en": str(i.get("name_en") or ""), "name_zh": str(i.get("name_zh") or ""),
                 "price": i.get("price"), "price_text": money(i.get("price")), "thumb": i.get("thumb") or "",
                 "here": i.get("here") or 0} for i in good]
        if replace:
            self.items = rows
        else:
            self.items.extend(rows)
        self.total = int(page.get("total") or 0)
        self.error = ""
        self.loading = False
        self.dispatch("on_page", rows, replace)
        self.loads += 1

    def _failed(self, msg: str) -> None:
        self.error = msg
        self.loading = False
        self.loads += 1


def availability_lines(av: dict[str, Any]) -> list[Line]:
    """Availability told plainly, most useful first; the figure's age when it is not fresh."""
    out: list[Line] = []
    here = int((av.get("here") or {}).get("qty") or 0)
    if here > 0:
        out.append(line("In this store: {n} on the shelf", n=here))
    else:
        out.append(line("Not on the shelf in this store"))
    for s in av.get("stores") or []:
        out.append(line("At {store}, {km} km away: {n}", store=s.get("name") or s.get("code"),
                        km=f"{float(s.get('km') or 0):.1f}", n=int(s.get("qty") or 0)))
    wh = av.get("warehouse") or {}
    if int(wh.get("qty") or 0) > 0:
        out.append(line("Ships from the warehouse in {days} days", days=int(wh.get("days") or 0)))
    if av.get("source") == "none":
        out = [line("Stock figures are not available right now")]
    elif av.get("source") == "cache" and av.get("age_s") is not None:
        minutes = int(av["age_s"]) // 60
        out.append(line("Figures from {m} min ago (the store is offline)", m=minutes))
    return out


class ProductVM(EventDispatcher):  # type: ignore[misc]
    sku = StringProperty("")
    product = DictProperty()
    name_zh = StringProperty("")
    name_en = StringProperty("")
    brand = StringProperty("")
    desc_zh = StringProperty("")
    desc_en = StringProperty("")
    picture = StringProperty("")
    """The image shown: the first full picture, else the grid's thumbnail."""
    price_text = StringProperty("")
    attributes = ListProperty()
    images = ListProperty()
    availability = ListProperty()
    qty = NumericProperty(1)
    loading = BooleanProperty(False)
    error = StringProperty("")
    loads = NumericProperty(0)

    def __init__(self, client: BoxClient, worker: Worker, **kw: Any) -> None:
        super().__init__(**kw)
        self.client, self.worker = client, worker

    def open(self, summary: dict[str, Any]) -> None:
        self.sku = summary["sku"]
        # Show what the grid already knew at once; the details and figures fill in when they arrive.
        self.product = dict(summary)
        self._texts(self.product)
        self.price_text = money(summary.get("price"))
        self.attributes, self.images, self.availability, self.qty, self.error = [], [], [], 1, ""
        self.loading = True
        sku = self.sku
        self.worker.run(lambda: self.client.product(sku), self._details, self._failed, key="product")
        self.worker.run(lambda: self.client.availability(sku), self._figures, self._figures_failed, key="availability")

    def _details(self, p: dict[str, Any]) -> None:
        merged = dict(self.product)
        merged.update({k: v for k, v in p.items() if isinstance(k, str)})
        self.product = merged
        self._texts(merged)
        self.price_text = money(p.get("price"))
        attrs = p.get("attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
        self.attributes = [{"k": str(k), "v": str(v)} for k, v in list(attrs.items())[:12]]
        imgs = p.get("images")
        imgs = imgs if isinstance(imgs, list) else []
        self.images = [str(i["sha256"]) for i in imgs if isinstance(i, dict) and isinstance(i.get("sha256"), str)]
        if self.images:
            self.picture = self.images[0]
        self.loading = False
        self.loads += 1

    def _texts(self, p: dict[str, Any]) -> None:
        for key in ("name_zh", "name_en", "brand", "desc_zh", "desc_en"):
            value = p.get(key)
            setattr(self, key, value if isinstance(value, str) else "")
        thumb = p.get("thumb")
        self.picture = thumb if isinstance(thumb, str) else ""

    def _failed(self, msg: str) -> None:
        self.error = msg
        self.loading = False
        self.loads += 1

    def _figures(self, av: dict[str, Any]) -> None:
        self.availability = availability_lines(av)

    def _figures_failed(self, _msg: str) -> None:
        self.availability = [line("Stock figures are not available right now")]

    def more(self) -> None:
        self.qty = min(99, int(self.qty) + 1)

    def less(self) -> None:
        self.qty = max(1, int(self.qty) - 1)


class CheckoutVM(EventDispatcher):  # type: ignore[misc]
    """Pickup (this store or a nearby one) or delivery (an address form checked field by field)."""

    fulfilment = OptionProperty("pickup", options=["pickup", "delivery"])
    pickup_store = StringProperty("")
    pickup_options = ListProperty()
    name = StringProperty("")
    phone = StringProperty("")
    address = StringProperty("")
    focus = OptionProperty("name", options=["name", "phone", "address"])
    errors = DictProperty()
    """field → msgid of what is wrong with it (shown under the field)."""
    name_error = StringProperty("")
    phone_error = StringProperty("")
    address_error = StringProperty("")
    busy = BooleanProperty(False)
    error = StringProperty("")

    def __init__(self, client: BoxClient, worker: Worker, **kw: Any) -> None:
        self._checked: set[str] = set()
        """Fields checked once (the shopper pressed 'place order'): their messages follow the typing."""
        super().__init__(**kw)
        self.client, self.worker = client, worker

    def on_fulfilment(self, _inst: Any, _value: str) -> None:
        # Messages about the address form mean nothing once the shopper chose pickup (and back).
        self._checked.clear()
        self._show({})

    def load_options(self) -> None:
        def done(info: dict[str, Any]) -> None:
            opts = [p for p in info.get("pickup", []) if isinstance(p, dict) and p.get("code")]
            self.pickup_options = opts
            if not self.pickup_store and opts:
                self.pickup_store = str(opts[0]["code"])

        self.worker.run(self.client.info, done, lambda msg: setattr(self, "error", msg), key="info")

    def key(self, ch: str) -> None:
        value = getattr(self, self.focus)
        if len(value) < (200 if self.focus == "address" else 40):
            setattr(self, self.focus, value + ch)
            self._recheck()

    def backspace(self) -> None:
        setattr(self, self.focus, getattr(self, self.focus)[:-1])
        self._recheck()

    def _recheck(self) -> None:
        # Once the form was checked, a field's message follows the typing (gone as soon as it is right,
        # back if it goes wrong again); before that, nobody is told off for a half-typed number.
        if self.focus in self._checked:
            self.validate(only=self.focus)

    def validate(self, only: str | None = None) -> bool:
        errors = {k: v for k, v in self.errors.items() if only is not None and k != only}
        if self.fulfilment == "delivery":
            self._checked.update(("name", "phone", "address") if only is None else (only,))
            checks = {
                "name": "Please enter a name" if len(self.name.strip()) < 2 else None,
                "phone": "Please enter a phone number (6 to 20 digits)" if not _PHONE.fullmatch(self.phone.strip()) else None,
                "address": "Please enter street, number and city" if len(self.address.strip()) < 6 else None,
            }
            for k, msg in checks.items():
                if (only is None or k == only) and msg:
                    errors[k] = msg
        self._show(errors)
        return not errors

    def _show(self, errors: dict[str, str]) -> None:
        self.errors = errors
        for field in ("name", "phone", "address"):
            setattr(self, f"{field}_error", errors.get(field, ""))

    def order_body(self, basket: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"lines": [{"sku": i["sku"], "qty": int(i["qty"])} for i in basket],
                                "fulfilment": self.fulfilment}
        if self.fulfilment == "pickup":
            if self.pickup_store:
                body["pickup_store"] = self.pickup_store
        else:
            body.update(name=self.name.strip(), phone=self.phone.strip(), address=self.address.strip())
        return body

    def place(self, basket: list[dict[str, Any]], done: Callable[[dict[str, Any]], None]) -> None:
        if self.busy or not basket or not self.validate():
            return
        self.busy, self.error = True, ""
        body = self.order_body(basket)

        def ok(answer: dict[str, Any]) -> None:
            self.busy = False
            done(answer)

        def failed(msg: str) -> None:
            self.busy = False
            self.error = msg

        self.worker.run(lambda: self.client.place(body), ok, failed, key="place")

    def wipe(self) -> None:
        self.fulfilment, self.name, self.phone, self.address, self.focus = "pickup", "", "", "", "name"
        self._checked.clear()
        self.errors, self.error, self.busy = {}, "", False
        self.name_error = self.phone_error = self.address_error = ""


class ConfirmVM(EventDispatcher):  # type: ignore[misc]
    order_id = StringProperty("")
    confirm_url = StringProperty("")
    total_text = StringProperty("")
    fulfilment = StringProperty("")
    answer = ObjectProperty(None, allownone=True)

    def show(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.order_id = str(answer.get("order_id") or "")
        self.confirm_url = str(answer.get("confirm_url") or "")
        self.total_text = money(answer.get("total"))
        self.fulfilment = str(answer.get("fulfilment") or "")

    def wipe(self) -> None:
        self.order_id = self.confirm_url = self.total_text = self.fulfilment = ""
        self.answer = None
