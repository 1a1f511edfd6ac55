from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.support import User, user_payload


def test_register_login_get_roundtrip(client: httpx.Client) -> None:
    body = user_payload(gender="female", interests=["chess", "go"], email="roundtrip@example.com")
    response = client.post("/user/register", json=body)
    assert response.status_code == 200, response.text
    user_id = response.json()["user_id"]
    assert user_id.isdigit()
    assert "X-Request-ID" in response.headers

    token = client.post("/login", json={"id": user_id, "password": body["password"]}).json()["token"]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user_id
    assert claims["exp"] > claims["iat"]

    profile = client.get(f"/user/get/{user_id}")
    assert profile.status_code == 200
    assert profile.json() == {
        "id": user_id,
        "first_name": body["first_name"],
        "second_name": body["second_name"],
        "birthdate": body["birthdate"],
        "biography": body["biography"],
        "city": body["city"],
        "gender": "female",
        "interests": ["chess", "go"],
    }
    # Served from the cache the second time: identical, and never the email or the hash.
    again = client.get(f"/user/get/{user_id}").json()
    assert again == profile.json()
    assert "email" not in again
    assert "password" not in again
    assert "password_hash" not in again


def test_seed_login_path_and_interests_string(client: httpx.Client) -> None:
    body = user_payload(interests="music, travel ,")
    user_id = client.post("/user/register", json=body).json()["user_id"]
    login = client.post("/user/login", json={"id": user_id, "password": body["password"]})
    assert login.status_code == 200
    assert client.get(f"/user/get/{user_id}").json()["interests"] == ["music", "travel"]


def test_login_errors(client: httpx.Client, make_user: Callable[..., User]) -> None:
    user = make_user()
    wrong = client.post("/login", json={"id": user.id, "password": "not the password"})
    assert wrong.status_code == 400
    assert "password" in wrong.json()["message"]
    unknown = client.post("/login", json={"id": "123456789", "password": "whatever1"})
    assert unknown.status_code == 404
    for bad in ({"id": user.id}, {"password": "x"}, {"id": 5, "password": "x"}, {"id": "abc", "password": "x"}):
        response = client.post("/login", json=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["message"]


def test_duplicate_email_is_409_case_insensitive(client: httpx.Client) -> None:
    assert client.post("/user/register", json=user_payload(email="dup@example.com")).status_code == 200
    second = client.post("/user/register", json=user_payload(email="DUP@example.com"))
    assert second.status_code == 409
    assert "email" in second.json()["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"first_name": ""}, "first_name"),
        ({"first_name": "   "}, "first_name"),
        ({"second_name": 12}, "second_name"),
        ({"birthdate": "1990-13-40"}, "birthdate"),
        ({"birthdate": "2999-01-01"}, "birthdate"),
        ({"password": "short"}, "password"),
        ({"city": None}, "city"),
        ({"email": "not-an-email"}, "email"),
        ({"interests": [1, 2]}, "interests"),
        ({"biography": "x" * 6000}, "biography"),
    ],
)
def test_register_rejects_bad_fields(client: httpx.Client, change: dict[str, object], field: str) -> None:
    response = client.post("/user/register", json=user_payload(**change))
    assert response.status_code == 400, response.text
    assert field in response.json()["message"]


def test_register_missing_field_names_it(client: httpx.Client) -> None:
    body = user_payload()
    del body["city"]
    response = client.post("/user/register", json=body)
    assert response.status_code == 400
    assert "city" in response.json()["message"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b'"str"', b"\xff\xfe"])
def test_register_rejects_malformed_bodies(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/user/register", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["message"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    response = client.post("/user/register", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["message"]


def test_get_user_errors(client: httpx.Client, make_user: Callable[..., User]) -> None:
    assert client.get("/user/get/999999999999").status_code == 404
    for bad in ("abc", "-1", "0", "1" * 30, "%20"):
        response = client.get(f"/user/get/{bad}")
        assert response.status_code == 400, bad
        assert response.json()["message"]
    user = make_user()
    assert client.get(f"/user/get/{user.id}", headers=user.auth).status_code == 200
    forged = client.get(f"/user/get/{user.id}", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401


def test_search_prefix_case_insensitive_ordered(client: httpx.Client, make_user: Callable[..., User]) -> None:
    family = "Zebrovsky" + str(time.time_ns())[-6:]
    made = [make_user(first_name=name, second_name=family) for name in ("Alexander", "alexey", "Boris")]
    found = client.get("/user/search", params={"first_name": "ALEX", "last_name": family[:12].lower()}).json()
    assert [u["id"] for u in found] == sorted([made[0].id, made[1].id], key=int)
    limited = client.get("/user/search", params={"first_name": "", "last_name": family, "limit": 2}).json()
    assert len(limited) == 2
    after = client.get(
        "/user/search", params={"first_name": "", "last_name": family, "after": limited[-1]["id"]}
    ).json()
    assert [u["id"] for u in after] == [made[2].id]


def test_search_treats_wildcards_literally(client: httpx.Client, make_user: Callable[..., User]) -> None:
    make_user(first_name="Percent", second_name="Sign")
    assert client.get("/user/search", params={"first_name": "%", "last_name": "%"}).json() == []
    assert client.get("/user/search", params={"first_name": "_", "last_name": ""}).json() == []


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"first_name": "a"},
        {"first_name": "a", "last_name": "b", "limit": "0"},
        {"first_name": "a", "last_name": "b", "limit": "1001"},
        {"first_name": "a", "last_name": "b", "limit": "x"},
    ],
)
def test_search_bad_params(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/user/search", params=params)
    assert response.status_code == 400
    assert response.json()["message"]


# Names in several scripts and cases: what a database under the C locale (the embedded one) got
# wrong when lower() did the folding (it left every non-ASCII letter unchanged).
INTERNATIONAL = [
    ("Анна", "Петрова", [("Анна", "Петрова"), ("анна", "петр"), ("АН", "ПЕТРОВА"), ("аННа", "Пе")]),
    ("Ёжик", "Ёлкин", [("ёж", "ЁЛ"), ("ЁЖИК", "ёлкин")]),
    ("Σοφία", "Παπαδοπούλου", [("ΣΟΦ", "παπα"), ("σοφία", "ΠΑΠΑΔΟΠΟΎΛΟΥ")]),
    ("Émile", "Zoë-Müller", [("émi", "ZOË"), ("ÉMILE", "zoë-mü"), ("E\u0301mi", "Zoe\u0308")]),
    ("Straße", "Ørsted", [("STRASSE", "ør"), ("straß", "ØRSTED")]),
]


@pytest.mark.parametrize(("first", "last", "queries"), INTERNATIONAL, ids=[f for f, _, _ in INTERNATIONAL])
def test_search_any_script_case_insensitive(
    client: httpx.Client, make_user: Callable[..., User], first: str, last: str, queries: list[tuple[str, str]]
) -> None:
    # A marker in the city keeps other runs' namesakes out of the comparison.
    city = "Search" + str(time.time_ns())
    user = make_user(first_name=first, second_name=last, city=city)
    for first_query, last_query in queries:
        found = client.get("/user/search", params={"first_name": first_query, "last_name": last_query, "limit": 1000})
        assert found.status_code == 200, found.text
        mine = [u for u in found.json() if u["city"] == city]
        assert [u["id"] for u in mine] == [user.id], (first_query, last_query)
        assert mine[0]["first_name"] == first
        assert mine[0]["second_name"] == last
    # And a prefix that is not one finds nobody (accents and scripts are not folded away).
    for first_query, last_query in ((first + "x", last), (first, "Я" + last)):
        found = client.get("/user/search", params={"first_name": first_query, "last_name": last_query}).json()
        assert [u for u in found if u["city"] == city] == []


def test_optional_strings_are_never_null(client: httpx.Client, make_user: Callable[..., User]) -> None:
    # The OTUS spec's User has biography as a string: unset is "", in /user/get (cached or not) and
    # /user/search alike; our own gender and interests likewise.
    body = user_payload()
    del body["biography"]
    user_id = client.post("/user/register", json=body).json()["user_id"]
    for _ in range(2):  # the second read comes from the profile cache
        profile = client.get(f"/user/get/{user_id}").json()
        assert profile["biography"] == ""
        assert profile["gender"] == ""
        assert profile["interests"] == []
    found = client.get("/user/search", params={"first_name": body["first_name"], "last_name": body["second_name"]})
    (match,) = [u for u in found.json() if u["id"] == user_id]
    assert match == profile
    assert None not in match.values()


@pytest.mark.parametrize("field", ["biography", "gender", "interests", "email", "city"])
def test_register_refuses_null_with_a_message(client: httpx.Client, field: str) -> None:
    # Typed as strings by the spec: null is not a string. Leaving the field out leaves it unset.
    response = client.post("/user/register", json=user_payload(**{field: None}))
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert field in message
    assert "null" in message
