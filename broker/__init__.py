"""The omnishelf bus contract: topics, the envelope and its payloads, broker configuration.

Imports nothing else of omnishelf: edge/ and cloud/ depend on it, never the other way.
"""

from broker.envelope import (
    MAX_ENVELOPE_BYTES,
    PAYLOADS,
    ContractError,
    Envelope,
    MessageType,
    RejectReason,
    decode,
    encode,
    new_msg_id,
)

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "PAYLOADS",
    "ContractError",
    "Envelope",
    "MessageType",
    "RejectReason",
    "decode",
    "encode",
    "new_msg_id",
]
