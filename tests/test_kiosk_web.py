"""The kiosk's static web UI (kiosk_ui/web.py + kiosk_ui/static/): what the browser is served,
how it caches across an upgrade, and that every screen's text comes from both catalogues.
A FastAPI app with install_web only; the screens against the daemon are the browser tests'."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from edge.rules import Direction, Reason
from edge.spool_db import STATES as JOB_STATES
from kiosk_ui.users import Role
from kiosk_ui.web import STATIC_DIR, install_web

JS_TYPE = "text/javascript"
STATIC_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s+)["'](\.{1,2}/[^"']+)["']""")
DYNAMIC_IMPORT = re.compile(r"""\bimport\(\s*["'](\.{1,2}/[^"']+)["']""")
ASSET_REF = re.compile(r"""(?:href|src)="(/kiosk/static/[^"]+)\"""")
T_CALL = re.compile(r"""\bt\(\s*"([^"]+)\"""")
DATA_I18N = re.compile(r"""data-i18n(?:-[a-z]+)?="([^"]+)\"""")
TESTID = re.compile(r"""(?:testid:\s*|data-testid=)["`]([^"`]+)["`]""")
URL = re.compile(r"""https?://([^/\s"'`)]+)""")
LANGS = ("zh-CN", "en")


def client_for(root: Path = STATIC_DIR) -> TestClient:
    app = FastAPI()
    install_web(app, root)
    return TestClient(app, follow_redirects=False)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return client_for()


def static_files() -> list[Path]:
    return sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())


def catalogue(lang: str) -> dict[str, str]:
    data = json.loads((STATIC_DIR / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def resolve(url: str, rel: str) -> str:
    out: list[str] = []
    for part in (url.rsplit("/", 1)[0] + "/" + rel).split("/"):
        if part == "..":
            out.pop()
        elif part != ".":
            out.append(part)
    return "/".join(out)


def module_graph(client: TestClient, start: list[str], dynamic: bool = True) -> dict[str, bytes]:
    """Every URL reached from `start` through the modules' imports (static, and dynamic when
    asked), fetched: url -> body. Each must be served with its content type."""
    todo, seen = list(start), {}
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        res = client.get(url, headers={"Accept-Encoding": "identity"})
        assert res.status_code == 200, url
        ctype = res.headers["content-type"]
        seen[url] = res.content
        suffix = url.rsplit(".", 1)[1]
        expect = {"js": JS_TYPE, "css": "text/css", "json": "application/json"}[suffix]
        assert ctype.startswith(expect), (url, ctype)
        if suffix == "js":
            rels = STATIC_IMPORT.findall(res.text)
            if dynamic:
                rels += DYNAMIC_IMPORT.findall(res.text)
            todo += [resolve(url, rel) for rel in rels]
    return seen


def test_root_and_kiosk_redirect_to_the_ui(client: TestClient) -> None:
    for path in ("/", "/kiosk"):
        res = client.get(path)
        assert res.status_code in (302, 307), path
        assert res.headers["location"] == "/kiosk/"


def test_index_is_always_revalidated_and_strict(client: TestClient) -> None:
    res = client.get("/kiosk/")
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/html")
    assert res.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in res.headers["content-security-policy"]
    assert res.headers["x-content-type-options"] == "nosniff"
    assert '<html lang="zh-CN">' in res.text
    # every asset URL carries the version, so a cached copy can never be an old one
    refs = ASSET_REF.findall(res.text)
    assert refs and all(re.match(r"/kiosk/static/v-[0-9a-f]{12}/", r) for r in refs), refs
    assert client.head("/kiosk/").status_code == 200


def test_every_module_and_asset_is_served_with_its_type(client: TestClient) -> None:
    graph = module_graph(client, ASSET_REF.findall(client.get("/kiosk/").text))
    served_js = {u.rsplit("/js/", 1)[1] for u in graph if "/js/" in u}
    on_disk = {p.name for p in (STATIC_DIR / "js").glob("*.js")}
    assert served_js == on_disk, "a module is neither preloaded nor imported (dead file?)"
    version = next(iter(graph)).split("/")[3]
    for lang in LANGS:  # fetched by i18n.js relative to its own (versioned) URL
        res = client.get(f"/kiosk/static/{version}/i18n/{lang}.json")
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        assert res.headers["cache-control"].endswith("immutable")


def test_etag_gzip_and_unknown_paths(client: TestClient) -> None:
    res = client.get("/kiosk/static/js/counter.js")
    assert res.headers["cache-control"] == "no-cache"  # unversioned: revalidate
    etag = res.headers["etag"]
    again = client.get("/kiosk/static/js/counter.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    raw = client.get(
        "/kiosk/static/js/counter.js", headers={"Accept-Encoding": "gzip"}, follow_redirects=False
    )
    assert raw.headers.get("content-encoding") == "gzip"
    assert raw.content == res.content  # the client decodes: same module
    plain = client.get("/kiosk/static/js/counter.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(gzip.compress(plain.content)) < len(plain.content)
    for bad in ("/kiosk/static/nope.js", "/kiosk/static/../web.py", "/kiosk/static/index.html"):
        assert client.get(bad).status_code == 404, bad


def test_an_upgrade_changes_every_asset_url(tmp_path: Path) -> None:
    root = tmp_path / "static"
    shutil.copytree(STATIC_DIR, root)
    before = client_for(root)
    old = ASSET_REF.findall(before.get("/kiosk/").text)
    css = next(u for u in old if u.endswith(".css"))
    assert before.get(css).headers["cache-control"].endswith("immutable")
    (root / "app.css").write_text("/* upgraded */\n" + (root / "app.css").read_text())
    after = client_for(root)
    new = ASSET_REF.findall(after.get("/kiosk/").text)
    assert set(old).isdisjoint(new), "an upgraded box must not reuse a cached URL"
    stale = after.get(css)  # a page loaded before the upgrade asks for its old URL
    assert stale.status_code == 200 and stale.text.startswith("/* upgraded */")
    assert stale.headers["cache-control"] == "no-cache"


def test_both_catalogues_have_the_same_keys_and_placeholders() -> None:
    zh, en = (catalogue(lang) for lang in LANGS)
    assert set(zh) == set(en), set(zh) ^ set(en)
    for key in zh:
        assert zh[key].strip() and en[key].strip(), key
        assert set(re.findall(r"\{\w+\}", zh[key])) == set(re.findall(r"\{\w+\}", en[key])), key
    assert zh["lang.switch_to"] == "English" and en["lang.switch_to"] == "中文"


def test_every_key_the_ui_uses_is_in_the_catalogue() -> None:
    keys = set(catalogue("zh-CN"))
    used: set[str] = set()
    for path in static_files():
        if path.suffix in (".js", ".html"):
            text = path.read_text(encoding="utf-8")
            used |= set(T_CALL.findall(text)) | set(DATA_I18N.findall(text))
    assert len(used) > 100
    assert used - keys == set()
    # keys the UI builds from what the box sends (tx("reason.", d.reason) ...)
    built = {f"reason.{r}" for r in Reason} | {f"job.{s}" for s in JOB_STATES}
    built |= {f"direction.{d}" for d in Direction} | {f"role.{r.label}" for r in Role}
    built |= {f"door.{s}" for s in ("free", "occupied", "open", "fault", "expired")}
    built |= {f"state.{s}" for s in ("pending", "confirmed", "voided")}
    built |= {f"level.{s}" for s in ("normal", "warn", "full")}
    built |= {f"nav.{s}" for s in ("counter", "gate", "lockers", "printers", "status")}
    assert built - keys == set()


def test_the_contracts_test_ids_are_all_there() -> None:
    ids: set[str] = set()
    for path in static_files():
        if path.suffix in (".js", ".html"):
            ids |= set(TESTID.findall(path.read_text(encoding="utf-8")))
    fixed = [
        "login-name",
        "login-pin",
        "login-submit",
        "login-error",
        "logout",
        "lang-toggle",
        "toast",
        "scan-input",
        "decision",
        "decision-line",
        "decision-product",
        "decision-remaining",
        "confirm-redeem",
        "print-receipt",
        "recent-list",
        "shift-summary",
        "shift-close",
        "shift-close-confirm",
        "force-code",
        "force-lane",
        "force-note",
        "force-submit",
        "emergency-toggle",
        "emergency-pin",
        "emergency-confirm",
        "emergency-state",
        "fire-banner",
        "deny-counts",
        "deposit-order",
        "deposit-size",
        "deposit-submit",
        "status-devices",
        "status-sync",
        "status-cache",
        "status-cert",
        "status-clock",
        "status-version",
        "status-tls-fingerprint",
    ]
    assert set(fixed) - ids == set()
    templated = [
        "nav-${r.name}",
        "recent-${rid}",
        "void-${rid}",
        "lane-${name}",
        "lane-${name}-last",
        "open-${name}",
        "zone-${z.zone}",
        "bank-${bank}",
        "door-${id}",
        "door-open-${id}",
        "door-reissue-${id}",
        "printer-${p.name}",
        "test-page-${p.name}",
        "reprint-${j.id}",
        "held-${j.id}",
        "device-${d.name}",
    ]
    assert set(templated) - ids == set()


def test_nothing_is_loaded_from_another_host_and_it_stays_small(client: TestClient) -> None:
    total = 0
    for path in static_files():
        data = path.read_bytes()
        total += len(data)
        hosts = URL.findall(data.decode("utf-8"))
        assert hosts == [], (path.name, hosts)
        assert "@import" not in data.decode() and "@font-face" not in data.decode(), path.name
    assert total < 300 * 1024, total
    # what the counter screen loads first: index, CSS, the Chinese catalogue, main.js's static
    # imports and the counter's (the other screens load when opened)
    index = client.get("/kiosk/")
    refs = ASSET_REF.findall(index.text)
    main = next(u for u in refs if u.endswith("/main.js"))
    counter = resolve(main, "./counter.js")
    css_json = [u for u in refs if not u.endswith(".js")]
    loaded = module_graph(client, [main, counter, *css_json], dynamic=False)
    assert any(u.endswith("zh-CN.json") for u in loaded)
    first = len(index.content) + sum(len(body) for body in loaded.values())
    assert first < 100 * 1024, first
