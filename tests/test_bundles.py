"""Bundle refusals leave the active cache untouched; each reason of the closed set is reachable."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from edge import bundle as fmt
from edge.errors import BundleRefused
from sync.hub.issuer import BundleContent, Hub
from tests.conftest import NOW, SITE, Box


def refused(box: Box, path: Path, at: float | None = None) -> str:
    svc = box.service()
    before = svc.status(at=box.now)["cache"]
    with pytest.raises(BundleRefused) as info:
        svc.import_bundle(path, at=at)
    assert info.value.reason in fmt.BUNDLE_REASONS
    assert svc.status(at=box.now)["cache"] == before
    return info.value.reason


def test_snapshot_then_delta_then_rollback_and_wrong_base(box: Box) -> None:
    svc = box.service()
    first = box.snapshot()
    assert svc.import_bundle(first).seq == 1
    delta = box.bundle(BundleContent(short_codes=[box.short()]), snapshot=False)
    assert svc.import_bundle(delta).seq == 2
    assert refused(box, first) == "rollback"
    assert refused(box, delta) == "rollback"
    skipped = box.bundle(BundleContent(), snapshot=False)  # seq 3, base 2 — fine
    stale_base = box.bundle(BundleContent(), snapshot=False)  # seq 4, base 3
    assert refused(box, stale_base) == "wrong_base"
    assert svc.import_bundle(skipped).seq == 3
    assert svc.import_bundle(stale_base).seq == 4


def test_delta_without_active_cache_is_wrong_base(box: Box) -> None:
    box.snapshot()
    delta = box.bundle(BundleContent(), snapshot=False)
    assert refused(box, delta) == "wrong_base"


def test_other_site_unknown_key_bad_signature_expired(box: Box, tmp_path: Path) -> None:
    other = tmp_path / "other.bundle"
    box.hub.write_bundle("site-b", other, BundleContent(lists=[]), snapshot=True, now=int(NOW))
    assert refused(box, other) == "other_site"

    stranger = Hub.init(tmp_path / "stranger", keys=1, not_before=int(NOW) - 86400)
    foreign = tmp_path / "foreign.bundle"
    stranger.write_bundle(SITE, foreign, BundleContent(lists=[]), snapshot=True, now=int(NOW))
    assert refused(box, foreign) == "unknown_key"

    good = box.snapshot()
    data = bytearray(good.read_bytes())
    data[-1] ^= 0xFF
    forged = tmp_path / "forged.bundle"
    forged.write_bytes(bytes(data))
    assert refused(box, forged) == "bad_signature"

    expired = box.snapshot(expires_days=1)
    assert refused(box, expired, at=NOW + 2 * 86400) == "expired"


def test_unsupported_version_truncated_corrupted(box: Box, tmp_path: Path) -> None:
    good = box.snapshot(short_codes=[box.short() for _ in range(5)]).read_bytes()
    cases = {
        "v2.bundle": good[:8] + b"\x02" + good[9:],
        "cut.bundle": good[: len(good) - 80],
        "magic.bundle": b"NOTABNDL" + good[8:],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert refused(box, tmp_path / "v2.bundle") == "unsupported_version"
    assert refused(box, tmp_path / "cut.bundle") == "truncated"
    assert refused(box, tmp_path / "magic.bundle") == "corrupted"


def test_header_version_and_content_checks(box: Box, tmp_path: Path) -> None:
    key = box.hub.signing_key(box.hub.active_kid())

    def write(name: str, header: dict[str, object]) -> Path:
        path = tmp_path / name
        with path.open("wb") as f:
            w = fmt.BundleWriter(f, header, key)
            w.finish()
        return path

    base = {
        "site": SITE,
        "seq": 5,
        "base_seq": None,
        "issued_at": int(NOW),
        "expires_at": int(NOW) + 86400,
        "kid": box.hub.active_kid(),
        "key_certs": [box.hub.cert_hex(k) for k in box.hub.kids()],
        "site_info": {"timezone": "Asia/Shanghai"},
        "site_key": "00" * 32,
    }
    bad_list = write("badlist.bundle", base | {"lists": [{"id": "x", "anti_passback": "maybe"}]})
    assert refused(box, bad_list) == "invalid_content"
    bad_tz = write("badtz.bundle", base | {"site_info": {"timezone": "Mars/Olympus"}})
    assert refused(box, bad_tz) == "invalid_content"
    lying = write("counts.bundle", base | {"counts": {"revoke": 3}})
    assert refused(box, lying) == "corrupted"


def test_header_is_canonical_json_with_version(box: Box) -> None:
    data = box.snapshot().read_bytes()
    (length,) = struct.unpack(">I", data[9:13])
    header = json.loads(data[13 : 13 + length])
    assert header["format"] == "edge-bundle" and header["version"] == 1
