"""A gate lane's actuation (edge/lanes.py): open for the persons admitted and settle their
redemption by what passed, free passage (the fire input, the supervisor's emergency mode) and a
supervisor's manual open. The gate's I/O runs on its own thread (DeviceSlot.call).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError, StaleCommand
from drivers.gate import Gate, Passage
from edge.decision import Decision
from edge.devices import DeviceDown
from edge.errors import InvalidTransition, Stopping
from edge.lane_text import LINE_AGAIN, LINE_FAULT, LINE_FIRE, LINE_FREE, LINE_PASS

if TYPE_CHECKING:
    from edge.lanes import Lane

log = logging.getLogger(__name__)

MAX_OPEN = 100  # persons per gate command (drivers.gate.MAX_PERSONS); larger groups in turns


async def actuate(lane: Lane, d: Decision, t0: float) -> dict[str, Any]:
    """Open for the persons of an admitted (pending) redemption, in turns of MAX_OPEN, then
    confirm what passed or void it when nobody did (Lane.open_gate runs it as its own task)."""
    assert d.redemption_id is not None and d.canonical_id is not None
    rid = bytes.fromhex(d.redemption_id)
    gate = lane.gate
    assert gate is not None
    persons = max(1, d.persons or 1)
    lane.inflight = d.redemption_id
    lane.state.busy = True
    latency = time.monotonic() - t0
    passed, fire, error, why = 0, False, None, ""
    try:
        lane.feedback(True, LINE_PASS)
        left = persons
        while left > 0 and lane.accepting:
            n = min(left, MAX_OPEN)
            passage = await gate.call(gate_open, lane.cfg.gate_side, n, issued_at=t0)
            passed += passage.passed
            fire, error = fire or passage.fire, passage.error or error
            if passage.passed < n or passage.fire or passage.error:
                break
            left -= n
    except StaleCommand as err:
        why = f"gate command dropped: {err}"
    except (DeviceDown, DriverError) as err:
        # Before any pulse: it may or may not have reached the gate; the visitor is told
        # to ask staff and the ticket stays usable (a supervisor can force an admit).
        why = f"gate did not open: {err}"
    except Exception as err:  # a bug must not leave the redemption pending
        log.exception("lane %s: gate open failed", lane.name)
        why = f"gate open failed: {err}"
    finally:
        lane.state.busy = False
    result: dict[str, Any] = {"latency_s": latency, "passed": passed}
    try:
        if fire:
            await lane.set_fire(True)
        if passed > 0:
            lane.state.recent[d.canonical_id] = time.monotonic() + lane.cfg.dedupe_s
            await lane.db.call(lane.svc.confirm, rid, passed)
            result["state"] = "confirmed"
        else:
            lane.feedback(False, LINE_FAULT if why else LINE_AGAIN)
            why = why or error or ("fire alarm" if fire else "nobody passed")
            await lane.db.call(lane.svc.void, rid, why)
            result |= {"state": "voided", "why": why}
        if error:
            result["gate_error"] = error
    except InvalidTransition as err:  # voided meanwhile (an undo from the kiosk)
        log.warning("lane %s: %s; %d passed", lane.name, err, passed)
        result |= {"state": "voided", "why": str(err)}
    finally:
        lane.inflight = None
        lane.prune_recent()
    lane.bus.publish(
        "passage",
        lane=lane.name,
        redemption_id=d.redemption_id,
        requested=persons,
        passed=passed,
        state=result["state"],
    )
    return result


async def free_passage(lane: Lane, fp: str, t0: float) -> dict[str, Any]:
    """Fire (hardware) or emergency (software): no ticket check. During a fire alarm no
    command is sent at all; in emergency mode the gate opens for anyone who scans."""
    line = LINE_FIRE if lane.state.fire else LINE_FREE
    lane.feedback(True, line)
    out: dict[str, Any] = {
        "lane": lane.name,
        "decision": "free_passage",
        "fire": lane.state.fire,
        "emergency": lane.state.emergency,
        "code_fp": fp,
        "line_zh": line[0],
        "line_en": line[1],
    }
    if not lane.state.fire and lane.gate is not None:
        try:
            passage = await lane.gate.call(
                gate_open, lane.cfg.gate_side, 1, issued_at=time.monotonic()
            )
            out["passed"] = passage.passed
        except (DeviceDown, DriverError) as err:
            out["error"] = str(err)
        await lane.hooks.record("free_passage", {"lane": lane.name, "passed": out.get("passed", 0)})
    out["latency_ms"] = round((time.monotonic() - t0) * 1000, 2)
    return lane.publish(out)


async def manual_open(lane: Lane, persons: int = 1) -> dict[str, Any]:
    """A supervisor lets persons through (audited by the caller); no ticket involved."""
    if lane.gate is None:
        raise ValueError(f"lane {lane.name} has no gate")
    if lane.state.fire:
        return {"lane": lane.name, "passed": 0, "fire": True}
    if not lane.accepting:
        raise Stopping(f"lane {lane.name} is stopping")
    async with lane.turn:
        lane.state.busy = True
        try:
            passage = await lane.gate.call(
                gate_open,
                lane.cfg.gate_side,
                min(persons, MAX_OPEN),
                issued_at=time.monotonic(),
            )
        finally:
            lane.state.busy = False
    return {
        "lane": lane.name,
        "passed": passage.passed,
        "requested": persons,
        "fire": passage.fire,
    }


def gate_open(gate: Gate, side: str, persons: int, issued_at: float) -> Passage:
    """`Gate.open` for a lane (the overloaded method, pinned to its passage form)."""
    return gate.open(side, persons, issued_at=issued_at)
