"""README.md stays true: its curl flow (the code block under "The flow, with real responses") runs
against a fresh `sn dev`, and every response matches the one the README shows, ids, tokens and
times aside; then `sn seed` finds that dev server's databases by itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ROOT, free_port
from tests.test_cli import _start_dev, _stop, _wait_ready

pytestmark = pytest.mark.slow

README = ROOT / "README.md"
# Values that differ on every run: ids, tokens, timestamps.
_VARIABLE = re.compile(r"^(\d+|eyJ[\w-]+\.[\w-]+\.[\w-]+|\d{4}-\d\d-\d\dT[\d:.]+Z)$")


def _block_after(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    body = text.index("```sh\n", start) + len("```sh\n")
    return text[body : text.index("```\n", body)]


def _is_response(line: str) -> bool:
    return line.startswith("# ") and line[2:3] in ("{", "[", '"')


def _script(block: str, base_url: str) -> tuple[str, list[Any]]:
    """The block as a bash script printing a marker where each documented response is, and those responses."""
    lines = ["set -euo pipefail", "exec 2>&1"]
    expected = []
    for line in block.splitlines():
        if line == "B=http://localhost:9000":
            line = f"B={base_url}"
        if _is_response(line):
            expected.append(json.loads(line[2:]))
            line = "printf '\\n@@STEP\\n'"
        lines.append(line)
    return "\n".join(lines) + "\n", expected


def _same_shape(actual: Any, documented: Any, where: str) -> None:
    if isinstance(documented, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(documented), f"{where}: keys {list(actual)} != {list(documented)}"
        for key in documented:
            _same_shape(actual[key], documented[key], f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(actual, list), where
        assert len(actual) == len(documented), f"{where}: {len(actual)} items, the README shows {len(documented)}"
        for index, (a, d) in enumerate(zip(actual, documented, strict=True)):
            _same_shape(a, d, f"{where}[{index}]")
    elif isinstance(documented, str) and _VARIABLE.match(documented):
        assert isinstance(actual, str), where
        assert _VARIABLE.match(actual), f"{where}: {actual!r}"
    else:
        assert actual == documented, f"{where}: {actual!r}, the README shows {documented!r}"


def test_readme_flow_runs_against_sn_dev_as_documented(tmp_path: Path) -> None:
    block = _block_after("### The flow, with real responses")
    compose = _block_after("The flow against it")
    # The compose section uses the very same helpers.
    for helper in ("uid()", "token()"):
        (defined,) = [line for line in block.splitlines() if line.startswith(helper)]
        assert defined in compose.splitlines(), helper

    port = free_port()
    proc = _start_dev(tmp_path, port)
    try:
        _wait_ready(proc, port, tmp_path)
        script, expected = _script(block, f"http://127.0.0.1:{port}")
        assert len(expected) >= 20
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs = [chunk.strip() for chunk in result.stdout.split("@@STEP")][:-1]
        assert len(outputs) == len(expected), result.stdout
        for number, (output, documented) in enumerate(zip(outputs, expected, strict=True), 1):
            _same_shape(json.loads(output), documented, f"response {number} ({output[:80]})")

        # Seeding the running dev server needs no URLs: `sn seed` reads var/dev-servers.json.
        seeded = subprocess.run(
            [sys.executable, "-m", "sn", "seed", "--users", "60", "--celebrities", "1", "--celebrity-followers", "30"],
            cwd=tmp_path,
            env=_dev_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert seeded.returncode == 0, seeded.stderr
        found = re.search(r"celebrities \(30 followers each\): (\d+)", seeded.stdout)
        assert found is not None, seeded.stdout
        celebrity = httpx.get(f"http://127.0.0.1:{port}/user/get/{found.group(1)}", timeout=10)
        assert celebrity.status_code == 200, celebrity.text
        # Seeded names are mostly Russian: searching by one (upper-cased) finds the user.
        profile = celebrity.json()
        search = httpx.get(
            f"http://127.0.0.1:{port}/user/search",
            params={"first_name": profile["first_name"].upper(), "last_name": profile["second_name"][:3].lower()},
            timeout=10,
        )
        assert profile["id"] in [u["id"] for u in search.json()]
    finally:
        assert _stop(proc) == 0
    assert not (tmp_path / "var" / "dev-servers.json").exists()  # removed when sn dev stops


def _dev_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SN_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    return env
