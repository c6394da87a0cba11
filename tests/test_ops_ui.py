"""The UI's static files over real HTTP: types, caching, gzip, SPA fallback, auth."""

from __future__ import annotations

import base64
import gzip

import pytest

from httpkit import Proxy, config


@pytest.fixture(scope="module")
def proxy():
    p = Proxy(config())
    try:
        yield p
    finally:
        p.close()


def test_index_js_css_with_types_and_no_cache(proxy):
    status, headers, body = proxy.request("GET", "/ui/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert b"<html" in body.lower()
    for path, ctype in (("/ui/js/app.js", "text/javascript; charset=utf-8"),
                        ("/ui/style.css", "text/css; charset=utf-8"),
                        ("/favicon.ico", "image/x-icon")):
        status, headers, body = proxy.request("GET", path)
        assert (status, headers["content-type"]) == (200, ctype), path
        assert body


def test_gzip_only_when_accepted_and_smaller(proxy):
    _, plain_headers, plain = proxy.request("GET", "/ui/js/playground.js")
    assert "content-encoding" not in plain_headers
    _, headers, packed = proxy.request("GET", "/ui/js/playground.js",
                                       headers={"Accept-Encoding": "br, gzip"})
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed) == plain
    _, headers, _ = proxy.request("GET", "/ui/js/playground.js",
                                  headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in headers


def test_etag_revalidation(proxy):
    _, headers, _ = proxy.request("GET", "/ui/style.css")
    status, _, body = proxy.request("GET", "/ui/style.css",
                                    headers={"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"")


def test_spa_fallback_redirect_and_missing_asset(proxy):
    _, _, index = proxy.request("GET", "/ui/")
    status, _, body = proxy.request("GET", "/ui/models")
    assert (status, body) == (200, index)
    status, headers, _ = proxy.request("GET", "/ui")
    assert (status, headers["location"]) == (301, "/ui/")
    status, _, body = proxy.request("GET", "/ui/missing.js")
    assert (status, body) == (404, b"404 page not found\n")
    status, headers, _ = proxy.request("GET", "/")
    assert status == 302 and headers["location"] == "/ui"


def test_ui_needs_the_api_key_but_favicon_does_not():
    with Proxy(config(api_keys=("sk-ui",))) as p:
        status, headers, _ = p.request("GET", "/ui/")
        assert status == 401
        assert headers["www-authenticate"] == 'Basic realm="llama-swap"'
        basic = base64.b64encode(b"anyone:sk-ui").decode()
        status, _, body = p.request("GET", "/ui/", headers={"Authorization": f"Basic {basic}"})
        assert status == 200 and body
        assert p.request("GET", "/favicon.ico")[0] == 200
