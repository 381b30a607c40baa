"""The box's cloud link in its own process: `python -m sync.link_proc` (started by
sync/link_client.py's LinkClient, never by hand).

Why a process: the link's Python work (JSON, batches, paho) is seconds of CPU per 100k events.
Inside the daemon it holds the GIL the lanes need, and every scan hops threads several times
(scanner -> loop -> db -> loop -> gate), each hop possibly waiting a whole switch interval: a
drain made scan-to-gate p99 eight times its idle value. Here it has a GIL of its own.

Protocol: line-delimited JSON. The first line on stdin is the config (see `_config`); then
from the parent: {"notify": true}, {"csr": pem}, {"rotate": {"n", "cert", "key", "timeout"}},
{"publish_status": true}, {"extra": {...}} (fields of the retained status, e.g. cache_seq),
{"stop": true} (clean stop: offline status published, exit 0). To the parent, on stdout:
{"down": {id, type, issued_at, ttl_s, body}} (already stored in the inbox by the link),
{"refused": [reason, detail]}, {"status": {...}} (on change, and at least every 0.5 s),
{"rotated": n, "ok": bool}. Logs go to stderr (the parent logs them).

Never an orphan: stdin closing means the parent is gone, and the process exits at once without
a clean offline status (the broker publishes the last will, as when a daemon crashed); the
parent-death signal (Linux prctl) is a second guard. What the link stored is in ledger.db.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any

from edge.trust import TrustAnchor
from sync.link import Link
from sync.link_store import LedgerLinkStore
from sync.protocol import Down

log = logging.getLogger("sync.link_proc")

STATUS_EVERY_S = 0.5  # a status line at least this often
STATUS_POLL_S = 0.1  # and a change is reported within this
PR_SET_PDEATHSIG = 1
LINK_NICE = 10  # below the daemon: its lanes' scans come first


class Out:
    """stdout, one JSON document a line, written from the link's threads and the main one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, doc: dict[str, Any]) -> None:
        line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                os._exit(1)  # the parent is gone: nothing to report to


def _parent_death_signal(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies (Linux; elsewhere stdin EOF suffices)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _lower_priority() -> None:
    """The link is background work: when the box's CPUs are busy (a drain after an outage
    keeps the link busy for seconds), a visitor's scan must get the CPU first. Its network
    wait is what bounds a drain, not its CPU share."""
    try:
        os.nice(LINK_NICE)
    except OSError as err:  # not allowed (a sandbox): runs at the parent's priority
        log.info("link process priority unchanged: %s", err)


def _make_link(doc: dict[str, Any], out: Out) -> tuple[Link, dict[str, Any]]:
    """The Link the config line describes; `extra` is what the parent last sent for the
    retained status."""
    extra: dict[str, Any] = dict(doc.get("extra") or {})
    anchor = TrustAnchor(bytes.fromhex(doc["anchor"]["public_key"]), doc["anchor"]["label"])
    store = LedgerLinkStore(Path(doc["ledger"]), box=doc["box"], site=doc["site"])

    def on_down(down: Down) -> None:
        body = {"id": down.id, "type": down.type, "issued_at": down.issued_at}
        out.send({"down": {**body, "ttl_s": down.ttl_s, "body": down.body}})

    link = Link(
        store,
        host=doc["host"],
        port=int(doc["port"]),
        ca=Path(doc["ca"]),
        cert=Path(doc["cert"]),
        key=Path(doc["key"]),
        anchor=anchor,
        on_down=on_down,
        on_refused=lambda reason, detail: out.send({"refused": [reason, detail]}),
        keepalive=int(doc.get("keepalive", 30)),
        status_extra=lambda: dict(extra),
    )
    return link, extra


def _status_loop(link: Link, out: Out, stop: threading.Event) -> None:
    last: dict[str, Any] | None = None
    sent_at = 0.0
    while not stop.wait(STATUS_POLL_S):
        st = link.status()
        now = time.monotonic()
        if st != last or now - sent_at >= STATUS_EVERY_S:
            out.send({"status": st})
            last, sent_at = st, now


def serve(stdin: IO[bytes], out: Out) -> int:
    first = stdin.readline()
    if not first:
        return 1
    doc = json.loads(first)
    logging.getLogger().setLevel(int(doc.get("log_level", logging.INFO)))
    _parent_death_signal(int(doc.get("parent", 0)))
    link, extra = _make_link(doc, out)
    stop = threading.Event()
    status = threading.Thread(target=_status_loop, args=(link, out, stop), name="link-status")
    link.start()
    status.start()
    log.info("link process %d started for %s", os.getpid(), doc["box"])
    for line in stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            log.error("unreadable line from the parent: %r", line[:200])
            continue
        if "stop" in msg:
            link.stop()  # publishes the clean offline status
            stop.set()
            status.join()
            out.send({"status": link.status()})
            return 0
        _command(link, extra, out, msg)
    # stdin closed without a stop: the parent died. Leave at once; the broker's last will
    # says offline, and what the link stored is committed in ledger.db.
    log.warning("the daemon is gone (stdin closed): link process exits")
    return 1


def _command(link: Link, extra: dict[str, Any], out: Out, msg: dict[str, Any]) -> None:
    if "notify" in msg:
        link.notify()
    elif "extra" in msg:
        extra.clear()
        extra.update(msg["extra"])
    elif "publish_status" in msg:
        link.publish_status()
    elif "csr" in msg:
        link.request_certificate(str(msg["csr"]).encode("ascii"))
    elif "rotate" in msg:
        r = msg["rotate"]
        n = r["n"]
        fut = link.rotate(Path(r["cert"]), Path(r["key"]), float(r.get("timeout", 30.0)))

        def done(f: Future[bool], n: Any = n) -> None:
            out.send({"rotated": n, "ok": bool(f.result())})

        fut.add_done_callback(done)
    else:
        log.error("unknown command from the parent: %s", sorted(msg))


def main() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    out = Out(sys.stdout.buffer)
    _lower_priority()
    try:
        code = serve(sys.stdin.buffer, out)
    except Exception:
        log.exception("link process failed")
        code = 1
    sys.stderr.flush()
    os._exit(code)  # paho's and the link's threads are daemons or done: no join to wait for


if __name__ == "__main__":
    main()
