"""DKIM: digests signed over the one-click unsubscribe headers, verifiable by a receiver."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import dkim
import pytest

from newsletter.config import load_settings
from newsletter.errors import ConfigError
from tests.test_cli import run


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A fresh 2048-bit key, and the DNS TXT record a receiver would look up."""
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def _dns(record: bytes):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"news._domainkey.papers.example." else None

    return lookup


def test_sent_digests_verify_and_cover_list_unsubscribe(tmp_path: Path, rsa_key) -> None:  # type: ignore[no-untyped-def]
    key, record = rsa_key
    env = {
        "NEWSLETTER_FROM": "digest@papers.example",
        "NEWSLETTER_DKIM_DOMAIN": "papers.example",
        "NEWSLETTER_DKIM_SELECTOR": "news",
        "NEWSLETTER_DKIM_KEY_FILE": str(key),
    }
    run(tmp_path, "db", "upgrade")
    run(tmp_path, "ingest")
    run(tmp_path, "subscribers", "add", "ada@example.org", "--topic", "diffusion")
    run(tmp_path, "send", "--now", env=env)
    (eml,) = (tmp_path / "outbox").rglob("*.eml")
    data = eml.read_bytes()
    assert data.startswith(b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=_dns(record))
    signature = data.split(b"\r\n\r\n", 1)[0].split(b"\r\nFrom:")[0].decode()
    signed = re.search(r"h=([^;]+);", signature.replace("\r\n", "")).group(1)  # type: ignore[union-attr]
    names = {h.strip() for h in signed.split(":")}
    assert {"from", "list-unsubscribe", "list-unsubscribe-post", "message-id"} <= names
    # A relay that swaps the unsubscribe link breaks the signature.
    forged = re.sub(
        rb"List-Unsubscribe: <[^>]+>", b"List-Unsubscribe: <https://evil.example/u/1>", data
    )
    assert forged != data and not dkim.verify(forged, dnsfunc=_dns(record))


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"NEWSLETTER_DKIM_DOMAIN": "papers.example"}, "NEWSLETTER_DKIM_SELECTOR"),
        (
            {
                "NEWSLETTER_DKIM_DOMAIN": "papers.example",
                "NEWSLETTER_DKIM_SELECTOR": "news",
                "NEWSLETTER_DKIM_KEY_FILE": "missing.pem",
            },
            "NEWSLETTER_DKIM_KEY_FILE",
        ),
        (
            {
                "NEWSLETTER_DKIM_DOMAIN": "papers example",
                "NEWSLETTER_DKIM_SELECTOR": "news",
                "NEWSLETTER_DKIM_KEY_FILE": "x.pem",
            },
            "NEWSLETTER_DKIM_DOMAIN",
        ),
    ],
)
def test_incomplete_or_broken_dkim_settings_are_refused_at_start(
    tmp_path: Path, env, setting
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        load_settings(
            environ={"NEWSLETTER_HOME": str(tmp_path), **env}, dotenv_path=tmp_path / "none"
        )
    assert caught.value.setting == setting
