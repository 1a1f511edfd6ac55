from __future__ import annotations

from pathlib import Path

import pytest

from sn.settings import SettingsError, load_settings


def test_defaults_and_sn_names() -> None:
    settings = load_settings(
        {"SN_PORT": "9100", "SN_WORKERS": "4", "SN_CORS_ORIGINS": "https://a, https://b"}, dotenv=None
    )
    assert settings.port == 9100
    assert settings.workers == 4
    assert settings.cors_origins == ("https://a", "https://b")
    assert settings.database_url is None
    assert settings.celebrity_threshold == 1000


def test_seed_names_are_fallbacks_and_sn_names_win() -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://seed/db",
            "REDIS_URL": "redis://seed",
            "RABBITMQ_URL": "amqp://seed",
            "LOG_LEVEL": "DEBUG",
            "CELEBRITY_THRESHOLD": "50",
            "SN_REDIS_URL": "redis://mine",
        },
        dotenv=None,
    )
    assert settings.database_url == "postgresql://seed/db"
    assert settings.redis_url == "redis://mine"
    assert settings.amqp_url == "amqp://seed"
    assert settings.log_level == "DEBUG"
    assert settings.celebrity_threshold == 50


def test_dotenv_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nSN_PORT=9300   # the port\nexport SN_LOG_FORMAT='json'\nSN_WORKERS=3\n")
    settings = load_settings({"SN_WORKERS": "5"}, dotenv=env_file)
    assert (settings.port, settings.log_format, settings.workers) == (9300, "json", 5)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"SN_PORT": "abc"}, "SN_PORT"),
        ({"SN_WORKERS": "0"}, "SN_WORKERS"),
        ({"SN_LOG_FORMAT": "xml"}, "log_format"),
        ({"SN_ACCESS_LOG": "maybe"}, "SN_ACCESS_LOG"),
        ({"SN_LOG_LEVEL": "LOUD"}, "SN_LOG_LEVEL"),
        ({"CELEBRITY_BATCH_SIZE": "0"}, "CELEBRITY_BATCH_SIZE"),
        ({"SN_MONITORING_ACCESS": "listen"}, "SN_MONITORING_LISTEN=host:port"),
        ({"SN_MONITORING_ACCESS": "listen", "SN_MONITORING_LISTEN": "0.0.0.0:9000"}, "another port"),
        ({"SN_MONITORING_ACCESS": "public"}, "monitoring_access"),
        ({"SN_WS_MAX_PER_USER": "-1"}, "SN_WS_MAX_PER_USER"),
        ({"SN_HEADER_TIMEOUT_SECONDS": "0"}, "SN_HEADER_TIMEOUT_SECONDS"),
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env, dotenv=None)


def test_secret_required_and_strong() -> None:
    with pytest.raises(SettingsError, match="not set"):
        load_settings({}, dotenv=None).require_secret()
    with pytest.raises(SettingsError, match="32 bytes"):
        load_settings({"SN_JWT_SECRET": "short"}, dotenv=None).require_secret()
    assert load_settings({"JWT_SECRET": "x" * 32}, dotenv=None).require_secret() == "x" * 32


def test_env_example_documents_every_setting(repo_root: Path) -> None:
    import msgspec

    from sn.settings import Settings

    documented = (repo_root / ".env.example").read_text()
    for field in msgspec.structs.fields(Settings):
        if field.name == "dev_mode":
            continue
        assert f"SN_{field.name.upper()}" in documented, field.name


def test_env_example_parses(repo_root: Path) -> None:
    settings = load_settings({}, dotenv=repo_root / ".env.example")
    # Safe to copy to .env: the connection URLs stay unset (so `make run` keeps its embedded
    # servers), and every other value is the default.
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings == load_settings({}, dotenv=None)
    assert "# SN_DATABASE_URL=postgresql://" in (repo_root / ".env.example").read_text()
    assert settings.amqp_url is None
    assert settings.cors_origins == ("*",)
