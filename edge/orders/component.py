"""The order desk as a box component.

- `assign` commands (durable downlink): kept in the desk's database and acknowledged; a `withdraw`
  (reservation expired, order cancelled or moved) marks it withdrawn so staff cannot act on it.
- Local API (the kiosk/station UI calls it):
      GET  /desk/orders?state=            the assignments held here
      GET  /desk/orders/{assignment}
      POST /desk/orders/{assignment}/{step}   accept | reject | pick | pack | ship | ready | pickup | deliver
           body {"carrier", "tracking"} for ship, {"pickup_code"} for pickup, {"note"} for reject
      POST /desk/kiosk-order              an order placed at this box's kiosk (sent up as `order`)
  Each step goes up as a `fulfil` message through the outbox, so it survives an outage; with an
  `X-Clerk-Session` header (`edge.attribution`) it carries the clerk who took it.

Printing: accept prints the pick list, pack the packing slip, ready the pickup slip, through the
station's durable print queue (offered to the other components as `ctx.shared.print_queue`; a box
without a printer prints nothing and says so in the step's answer). A slip is queued once per
(assignment, step): a step retried after a timeout does not print twice. `on_step` stays a seam
for anything else that follows a step.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from broker.envelope import Envelope, MessageType
from broker.payloads import AssignAction, AssignData, FulfilData, FulfilStatus, OrderData, Payload
from edge.attribution import clerk_of
from edge.component import (
    BackgroundTask,
    CommandHandler,
    CommandRefused,
    Component,
    ComponentContext,
    ComponentError,
    Shared,
)
from edge.localapi import ApiError, Request, Route, integer, text
from edge.orders.desk_db import DeskDb
from edge.orders.slips import SLIPS, render_slip
from edge.outbox import Row

__all__ = ["STEPS", "OrderDeskComponent"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0

STEPS: dict[str, tuple[tuple[str, ...], str, FulfilStatus]] = {
    # step: (states it may follow, the new local state, what the cloud is told)
    "accept": (("assigned",), "accepted", FulfilStatus.ACCEPTED),
    "reject": (("assigned", "accepted", "picking", "packed"), "rejected", FulfilStatus.REJECTED),
    "pick": (("accepted",), "picking", FulfilStatus.PICKING),
    "pack": (("picking",), "packed", FulfilStatus.PACKED),
    "ship": (("packed",), "shipped", FulfilStatus.SHIPPED),
    "ready": (("packed",), "ready", FulfilStatus.READY),
    "pickup": (("ready",), "picked_up", FulfilStatus.PICKED_UP),
    "deliver": (("shipped",), "delivered", FulfilStatus.DELIVERED),
}


class StepBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    carrier: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    tracking: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    pickup_code: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    note: Annotated[str, Field(max_length=500)] | None = None


class OrderDeskComponent(Component):
    name = "orders"

    def __init__(self, ctx: ComponentContext) -> None:
        path = ctx.paths.orders
        try:
            self.db = DeskDb(path)
        except OSError as exc:
            raise ComponentError(f"orders.path {path}: cannot open the order desk ({exc})") from None
        self._publish = ctx.publish
        self._shared: Shared = ctx.shared
        self._require_clerk = ctx.config.clerks.require_sign_in
        self.printed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self.on_step: Callable[[str, Mapping[str, Any]], None] | None = None
        """Print seam: called with (step, assignment) after a step went into the outbox."""
        self.sent = 0

    # -- bus ---------------------------------------------------------------------------------------

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {MessageType.ASSIGN: self._on_assign}

    async def _on_assign(self, env: Envelope) -> str:
        self._loop = asyncio.get_running_loop()
        data = env.data
        if not isinstance(data, AssignData):
            raise CommandRefused(f"an assign command carries AssignData, got {type(data).__name__}")
        if data.assignment is None:
            raise CommandRefused(f"order {data.order_id}: the assignment id is missing (cloud too old?)")
        body = data.model_dump(mode="json")
        if data.action is AssignAction.WITHDRAW:
            before = await asyncio.to_thread(self.db.withdraw, data.assignment, data.order_id, body)
            return f"assignment {data.assignment} withdrawn (was {before or 'never received'})"
        new = await asyncio.to_thread(self.db.store, data.assignment, data.order_id, body)
        return f"assignment {data.assignment} of order {data.order_id} " + ("stored" if new else "already held")

    # -- local API -----------------------------------------------------------------------------------

    def _send(self, kind: MessageType, payload: Payload) -> int:
        if self._loop is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the order desk is starting: try again in a moment")
        async def publish() -> Row:
            return await self._publish(kind, payload)

        try:
            row = asyncio.run_coroutine_threadsafe(publish(), self._loop).result(PUBLISH_TIMEOUT_S)
        except Exception as exc:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"could not queue the {kind.value} message: {exc}") from None
        self.sent += 1
        return int(row.seq)

    def _assignment(self, req: Request) -> dict[str, Any]:
        raw = req.args["assignment"]
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{raw[:40]!r} is not an assignment number")
        found = self.db.get(int(raw))
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no assignment {raw} at this store")
        return found

    def _print(self, step: str, a: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the step's slip; what the step's answer says about it (nothing for steps without one).
        The step itself is done (in the outbox) whatever happens here."""
        if step not in SLIPS:
            return {}
        kind, _ = SLIPS[step]
        queue = self._shared.print_queue
        if queue is None:
            return {"print": None, "print_note": "no printer on this box: nothing printed"}
        try:
            job, new = queue.queue_document(
                kind, lambda profile: render_slip(step, a, profile=profile, when=datetime.now()),
                request_id=f"orders-{a['assignment']}-{step}")
        except Exception as exc:  # the step went up already: a slip that cannot be queued is reported, not raised
            log.warning("order desk: the %s of assignment %s was not queued: %s", kind, a["assignment"], exc)
            return {"print": None, "print_note": f"the {kind.replace('_', ' ')} was not queued: {exc}"}
        self.printed += int(new)
        return {"print": {"job": job, "kind": kind, "new": new}}

    def routes(self) -> Sequence[Route]:
        def listing(req: Request) -> Any:
            state = req.params["state"]
            assert isinstance(state, str | None)
            return self.db.list(state or None, int(req.params["limit"] or 100))

        def one(req: Request) -> Any:
            return self._assignment(req)

        def step(req: Request) -> Any:
            # Who first: a clerk whose session ended learns that before anything about the order.
            who = clerk_of(req, self._shared, required=self._require_clerk)
            a = self._assignment(req)
            name = req.args["step"]
            if name not in STEPS:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no step {name[:40]!r}: expected one of {', '.join(STEPS)}")
            after, to, status = STEPS[name]
            body = req.body if isinstance(req.body, StepBody) else StepBody()
            if a["state"] == "withdrawn":
                raise ApiError(HTTPStatus.CONFLICT, f"assignment {a['assignment']} was withdrawn by the cloud "
                                                    "(expired, cancelled or moved): do not fulfil it")
            if a["state"] not in after:
                raise ApiError(HTTPStatus.CONFLICT, f"assignment {a['assignment']} is {a['state']}: "
                                                    f"'{name}' needs it {' or '.join(after)}")
            if name == "ship" and not (body.carrier and body.tracking):
                raise ApiError(HTTPStatus.BAD_REQUEST, "ship needs carrier and tracking")
            if name == "pickup":
                expected = self.db.pickup_hash(a["assignment"])
                given = hashlib.sha256((body.pickup_code or "").encode()).hexdigest()
                if not expected or not body.pickup_code or not hmac.compare_digest(expected, given):
                    raise ApiError(HTTPStatus.FORBIDDEN, "the pickup code does not match this order's")
            seq = self._send(MessageType.FULFIL, FulfilData(
                order_id=a["order_id"], status=status, assignment=a["assignment"], carrier=body.carrier,
                tracking=body.tracking, note=body.note, clerk=who))
            if not self.db.set_state(a["assignment"], a["state"], to, body.carrier, body.tracking):
                raise ApiError(HTTPStatus.CONFLICT, f"assignment {a['assignment']} changed meanwhile: reload it")
            printed = self._print(name, a)
            if self.on_step is not None:
                self.on_step(name, a)
            return {"assignment": a["assignment"], "state": to, "seq": seq,
                    "clerk": who.model_dump() if who else None, **printed}

        def kiosk_order(req: Request) -> Any:
            assert isinstance(req.body, OrderData)
            seq = self._send(MessageType.ORDER, req.body)
            return {"order_id": req.body.order_id, "seq": seq}

        return (
            Route("GET", "/desk/orders", listing, params=(text("state", max_len=20), integer("limit", 100, 1, 1000))),
            Route("GET", "/desk/orders/{assignment}", one),
            Route("POST", "/desk/orders/{assignment}/{step}", step, body=StepBody),
            Route("POST", "/desk/kiosk-order", kiosk_order, body=OrderData),
        )

    def tasks(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("order-desk", self._run),)

    async def _run(self) -> None:
        # Routes run on API worker threads: they hand publishing to this loop.
        self._loop = asyncio.get_running_loop()
        await self._stop.wait()

    def status(self) -> Mapping[str, Any]:
        return {"assignments": self.db.counts(), "sent": self.sent, "slips_queued": self.printed}

    async def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.db.close()
