"""Process settings both ends of the bus run with (the cloud worker, the box's agent)."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_objects"]


def freeze_startup_objects() -> None:
    """Exempt what the process built while starting (modules, SQLAlchemy and pydantic schemas:
    ~220,000 objects in a worker) from the cyclic garbage collector's full collections.

    Call it once, from a process's entry point, when its setup is done. A full collection walks
    every tracked object while holding the GIL, and the message rate sets one off every second or
    two: in a worker they took 70-360 ms each (measured with `gc.callbacks` during a burst, on a
    loaded machine), every message in flight waiting behind them. Frozen objects stay alive for
    good, so not from a library (a test process would keep all its garbage)."""
    gc.collect()
    gc.freeze()
