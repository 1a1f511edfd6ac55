"""The operators' endpoints' input rules (their behaviour under load is in tests/api/test_ws.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import JWT_SECRET
from tests.support import User, admin_token


@pytest.fixture
def admin(client: httpx.Client, make_user: Callable[..., User]) -> Iterator[dict[str, str]]:
    headers = {"Authorization": f"Bearer {admin_token(JWT_SECRET, make_user().id)}"}
    before = client.get("/celebrity-stats").json()["settings"]
    yield headers
    assert client.post("/celebrity-settings", json=before, headers=headers).status_code == 200


def test_celebrity_settings_take_integral_numbers_written_as_floats(
    client: httpx.Client, admin: dict[str, str]
) -> None:
    # The OpenAPI document says "integer", and JSON Schema counts 5000.0 as one.
    response = client.post(
        "/celebrity-settings", json={"celebrity_threshold": 5000.0, "batch_size": 250.0}, headers=admin
    )
    assert response.status_code == 200, response.text
    settings = response.json()["settings"]
    assert settings["celebrity_threshold"] == 5000
    assert isinstance(settings["celebrity_threshold"], int)
    assert settings["batch_size"] == 250


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"celebrity_threshold": 5000.5}, "got `float`"),
        ({"batch_size": 0.0}, ">= 1"),
        ({"batch_size": 1e9}, "<= 100000"),
        ({"celebrity_threshold": "5000"}, "Expected `int | null`, got `str`"),
    ],
)
def test_celebrity_settings_refuse_what_is_not_an_integer_in_range(
    client: httpx.Client, admin: dict[str, str], body: dict[str, Any], words: str
) -> None:
    before = client.get("/celebrity-stats").json()["settings"]
    response = client.post("/celebrity-settings", json=body, headers=admin)
    assert response.status_code == 400
    assert words in response.json()["message"]
    assert client.get("/celebrity-stats").json()["settings"] == before  # nothing changed
