"""Errors the API turns into 4xx responses; everything else unexpected becomes a 5xx."""

from __future__ import annotations


class ApiError(Exception):
    """A client-visible failure with its HTTP status and a message naming what was wrong."""

    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class TooManyRequests(ApiError):
    status = 429


class Overloaded(ApiError):
    """This server has no room for the request (not a dependency failure): 503, retry later."""

    status = 503


class ServiceUnavailable(Exception):
    """A dependency (PostgreSQL, Redis, RabbitMQ) does not answer: 503 with Retry-After."""

    def __init__(self, dependency: str, retry_after: int = 5) -> None:
        super().__init__(f"{dependency} is unavailable")
        self.dependency = dependency
        self.retry_after = retry_after
