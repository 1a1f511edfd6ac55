"""The web client's files as the server sends them: headers, caching, what is not served."""

from __future__ import annotations

import re

import httpx
import pytest

from sn.api.web import CONTENT_SECURITY_POLICY, assets


def test_index_and_modules_are_served_with_a_strict_policy_of_their_own(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self' ws: wss:"
    assert policy["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # Everything the page loads comes from this server, under /web/, and exists.
    referenced = re.findall(r'(?:src|href)="(/web/[^"]+)"', page.text)
    assert "/web/app.js" in referenced
    assert "/web/app.css" in referenced
    for path in referenced:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert client.get("/web/app.js").headers["content-type"] == "text/javascript; charset=utf-8"
    assert client.get("/web/app.css").headers["content-type"] == "text/css; charset=utf-8"


def test_no_inline_script_or_style_and_no_markup_from_data() -> None:
    files = assets()
    assert {"index.html", "app.js", "app.css", "live.js", "operator.js"} <= set(files)
    html = files["index.html"].body.decode()
    assert "<script>" not in html  # every script is a module file (the CSP refuses inline ones)
    assert " style=" not in html
    assert "<style" not in html
    for name, asset in files.items():
        if name.endswith(".js"):
            code = asset.body.decode()
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
                assert sink not in code, f"{name} uses {sink}: text must go in through textContent"
            # Modules import each other by relative path only: nothing from a CDN.
            for target in re.findall(r'from "([^"]+)"', code):
                assert target.startswith("./"), (name, target)


def test_conditional_get_and_head(client: httpx.Client) -> None:
    first = client.get("/web/app.js")
    etag = first.headers["etag"]
    again = client.get("/web/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert first.headers["cache-control"] == "no-cache"
    head = client.head("/")
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.parametrize("path", ["/web/nope.js", "/web/..%2Fapp.py", "/web/%2E%2E%2Fsettings.py", "/web/"])
def test_only_the_client_files_are_served(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "message" in response.json()
