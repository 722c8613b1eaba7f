"""The store box agent: durable outbox (SQLite), MQTT 5 bus client, components, devices, local API.

Kept light for Raspberry Pi class boxes (idle RSS ~41 MB, budget 60 MB): stdlib `sqlite3` and HTTP
server, paho via `broker.client`, pydantic via the bus contract; no web framework or ORM.

    agent.py        builds and runs everything from a `NodeConfig`
    bus.py          connection lifecycle, outbox sender, commands in (once per msg_id, acked)
    outbox.py       the durable outbox (async), over outbox_db.py (its SQLite file)
    component.py    what a box capability declares; components.py lists them
    localapi.py     the one local HTTP API
    devices.py      supervised devices; drivers/ holds the drivers by kind
    catalogue/      the catalogue component
    lock.py         one agent per outbox

Modules are imported where used, so the CLI stays quick and an unused capability costs no memory.
"""
