"""Settings: defaults need nothing, a bad value names its setting, .env is read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from newsletter.config import describe, load_settings
from newsletter.errors import ConfigError
from newsletter.runtime import secret_key
from newsletter.settings_doc import REPO_ENV_EXAMPLE, SETTINGS_DOC, env_example
from newsletter.text import has_unsafe


def test_embedded_default_needs_no_configuration(tmp_path: Path) -> None:
    s = load_settings(environ={"NEWSLETTER_HOME": str(tmp_path)}, dotenv_path=tmp_path / "none")
    assert s.database_url == f"sqlite:///{(tmp_path / 'data/newsletter.db').resolve()}"
    assert s.corpus_dir == tmp_path / "corpus"
    assert s.outbox_dir == tmp_path / "outbox"
    assert s.delivery == "file"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("NEWSLETTER_DELIVERY", "carrier-pigeon", "expected one of file, smtp, memory"),
        ("NEWSLETTER_FROM", "not an address", "not an email address"),
        ("NEWSLETTER_BASE_URL", "ftp://x", "expected an http(s) URL"),
        ("NEWSLETTER_BASE_URL", "https://x\r\nBcc: a@b", "expected an http(s) URL"),
        ("NEWSLETTER_DIGEST_MAX_PAPERS", "lots", "expected a whole number"),
        ("NEWSLETTER_DIGEST_MAX_PAPERS", "0", "must be at least 1"),
        ("NEWSLETTER_DEFAULT_TIMEZONE", "Mars/Olympus", "unknown IANA time zone"),
        ("NEWSLETTER_DEFAULT_SEND_AT", "25:00", "expected a time HH:MM"),
        ("NEWSLETTER_SECRET_KEY", "short", "at least 32 characters"),
        ("DATABASE_URL", "mysql://x", "only sqlite"),
        ("NEWSLETTER_OUTBOX", "x", "unknown setting"),
        ("NEWSLETTER_SOURCES", "dumps,ftp", "daily_papers, arxiv, got 'ftp'"),
        ("NEWSLETTER_SOURCES", " , ", "name at least one of"),
        ("NEWSLETTER_ARXIV_CATEGORIES", "cs.CL,cs CL", "not an arXiv category (like cs.CL"),
        ("NEWSLETTER_ARXIV_CATEGORIES", ",", "name at least one category"),
        ("NEWSLETTER_SEND_WORKERS", "many", "expected a whole number"),
        ("NEWSLETTER_SEND_WORKERS", "0", "must be at least 1"),
        ("NEWSLETTER_DAILY_PAPERS_URL", "https://h/x\nHost: y", "expected an http(s) URL"),
        # numbers no clock arithmetic can take (infinity, 10**12 days)
        ("NEWSLETTER_CORPUS_MAX_MB", "1e999", "must be at most"),
        ("NEWSLETTER_LEASE_SECONDS", "1e999", "must be at most"),
        ("NEWSLETTER_FIRST_DIGEST_DAYS", "999999999999", "must be at most 36500"),
        ("NEWSLETTER_HOME", "~no-such-user-here/x", "home directory that does not exist"),
        ("NEWSLETTER_CORPUS_DIR", "~no-such-user-here/x", "home directory that does not exist"),
        ("NEWSLETTER_BASE_URL", "http://[::1", "expected an http(s) URL"),
        ("NEWSLETTER_BASE_URL", "http://localhost:abc", "expected an http(s) URL"),
        ("NEWSLETTER_BASE_URL", "http://localhost:8000/\x1b[2J", "expected an http(s) URL"),
        ("NEWSLETTER_BASE_URL", "http://localhost:8000/\x7f", "expected an http(s) URL"),
        ("NEWSLETTER_FROM_NAME", "Paper\x1b[2J Digest", "holds a control character"),
        ("NEWSLETTER_FROM_NAME", "Paper \u202eDigest", "holds a control character"),
        ("DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:abc/nl", "not a database URL"),
        ("DATABASE_URL", "postgresql+psycopg://u:pw@[::1/db", "not a database URL"),
    ],
)
def test_wrong_value_fails_naming_the_setting(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={name: value}, dotenv_path=tmp_path / "none")
    assert info.value.setting == name
    assert str(info.value).startswith(f"{name}: ")
    assert says in str(info.value)
    assert not has_unsafe(str(info.value)) and "pw" not in str(info.value)  # shown as typed? never


def test_an_smtp_login_never_crosses_the_network_in_the_clear(tmp_path: Path) -> None:
    login = {"NEWSLETTER_DELIVERY": "smtp", "NEWSLETTER_SMTP_USERNAME": "u",
             "NEWSLETTER_SMTP_PASSWORD": "hunter2-secret"}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_settings(environ=login | {"NEWSLETTER_SMTP_HOST": "smtp.example.org"},
                      dotenv_path=tmp_path / "none")  # fmt: skip
    assert info.value.setting == "NEWSLETTER_SMTP_TLS" and "hunter2" not in str(info.value)
    for host, tls in (("smtp.example.org", "starttls"), ("smtp.example.org", "implicit"),
                      ("127.0.0.1", "none"), ("localhost", "none"), ("::1", "none")):  # fmt: skip
        env = login | {"NEWSLETTER_SMTP_HOST": host, "NEWSLETTER_SMTP_TLS": tls}
        assert load_settings(environ=env, dotenv_path=tmp_path / "none").smtp.tls == tls


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:pa/ss@db.example/nl", "postgresql+psycopg://u:***@db.example/nl"),
        ("postgresql+psycopg://u:p#w?x@h:5433/nl?sslpassword=s3&application_name=a",
         "postgresql+psycopg://u:***@h:5433/nl?application_name=a&sslpassword=***"),
        ("postgresql+psycopg://u@h/nl?password=s3", "postgresql+psycopg://u@h/nl?password=***"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ],
)  # fmt: skip
def test_config_shows_the_database_url_without_its_passwords(
    tmp_path: Path, url: str, shown: str
) -> None:
    """Read as the engine reads it: a password holding "/", "#" or "?" is still one."""
    settings = load_settings(environ={"DATABASE_URL": url}, dotenv_path=tmp_path / "none")
    assert describe(settings)["database_url"] == shown


def test_send_workers_default_to_one_per_core(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert load_settings(environ={}, dotenv_path=tmp_path / "none").send_workers == cores
    two = load_settings(environ={"NEWSLETTER_SEND_WORKERS": "2"}, dotenv_path=tmp_path / "x")
    assert two.send_workers == 2


def test_dotenv_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("NEWSLETTER_FROM=file@example.org\nNEWSLETTER_DIGEST_MAX_PAPERS=7\n")
    s = load_settings(environ={"NEWSLETTER_DIGEST_MAX_PAPERS": "9"}, dotenv_path=env_file)
    assert s.from_address == "file@example.org"
    assert s.digest_max_papers == 9


def test_env_example_documents_every_setting_with_its_default() -> None:
    text = REPO_ENV_EXAMPLE.read_text()
    assert text == env_example(), "regenerate: newsletter config --example > config/.env.example"
    for name, (default, _doc) in SETTINGS_DOC.items():
        assert f"# {name}={default}\n" in text


def test_generated_secret_key_is_private_and_stable(tmp_path: Path) -> None:
    s = load_settings(environ={"NEWSLETTER_HOME": str(tmp_path)}, dotenv_path=tmp_path / "none")
    first = secret_key(settings=s)
    assert len(first) >= 48
    assert secret_key(settings=s) == first
    assert (tmp_path / "data/secret_key").stat().st_mode & 0o077 == 0
