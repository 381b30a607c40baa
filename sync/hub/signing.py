"""Signing a downlink message with the hub's active key (docs/sync.md "Downlink")."""

from __future__ import annotations

from typing import Any

from sync import protocol
from sync.hub.issuer import Hub


def sign_message(
    hub: Hub, msg_type: str, body: dict[str, Any], ttl_s: float, msg_id: str, now: float
) -> bytes:
    """A downlink message signed with the hub's active key (its anchor certificate inside)."""
    kid = hub.active_kid()
    return protocol.sign_down(
        msg_type,
        body,
        msg_id=msg_id,
        issued_at=now,
        ttl_s=ttl_s,
        key=hub.signing_key(kid),
        cert_hex=hub.cert_hex(kid),
    )
