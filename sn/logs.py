"""Logging: one line per request and per notable event, as text or JSON (SN_LOG_FORMAT)."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from sn.settings import Settings

# Attributes every LogRecord has; anything else was passed through `extra=` and is emitted too.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """The classic line, plus `key=value` for whatever was passed in `extra=` (request_id...)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")]
        return f"{line} {' '.join(extras)}" if extras else line


def log_config(settings: Settings) -> dict[str, Any]:
    """A dictConfig for Sanic's loggers and ours, so every line has one format."""
    formatter = (
        {"()": JsonFormatter}
        if settings.log_format == "json"
        else {"()": TextFormatter, "fmt": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"}
    )
    level = settings.log_level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"console": handler},
        "loggers": {
            "sn": {"level": level, "handlers": ["console"], "propagate": False},
            "sanic.root": {"level": level, "handlers": ["console"], "propagate": False},
            "sanic.error": {"level": level, "handlers": ["console"], "propagate": False},
            "sanic.server": {"level": level, "handlers": ["console"], "propagate": False},
            "sanic.websockets": {"level": "WARNING", "handlers": ["console"], "propagate": False},
            "sanic.access": {"level": "WARNING", "handlers": ["console"], "propagate": False},
            # aio-pika/aiormq log an ERROR per channel and a traceback on every connection loss and
            # retry; RabbitBus logs "rabbitmq lost"/"regained" once per transition instead.
            "aio_pika": {"level": "CRITICAL", "handlers": ["console"], "propagate": False},
            "aiormq": {"level": "CRITICAL", "handlers": ["console"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["console"]},
    }


def configure(settings: Settings) -> None:
    import logging.config

    logging.config.dictConfig(log_config(settings))
