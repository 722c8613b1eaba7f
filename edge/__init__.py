"""The store box agent: durable outbox (SQLite), MQTT 5 bus client, devices.

Kept light for Raspberry Pi class boxes (idle RSS ~40 MB): stdlib `sqlite3`, paho via
`broker.client`, pydantic via the bus contract; no web framework or ORM is imported here.
Modules are imported where used (`edge.outbox`, `edge.bus`, `edge.agent`) so the CLI stays quick.
"""
