"""The README's demo command, run end to end in a fresh copy of the repository."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIPPED = ["pyproject.toml", "README.md", "newsletter", "templates", "config", "corpus", "scripts"]


def _copy_repo(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in SHIPPED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run_demo(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWSLETTER_") and k != "DATABASE_URL"
    }
    return subprocess.run(
        ["bash", "scripts/demo"],
        cwd=root,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_outbox(root: Path, stdout: str) -> list[Path]:
    emls = sorted((root / "outbox").rglob("*.eml"))
    # config/subscribers.csv: eight subscribers, one of whom (Marie) matches nothing.
    assert len(emls) == 7, stdout
    assert not any(p.name.startswith("marie@") for p in emls)
    assert str(emls[0].parent) in stdout  # it says where the digests are
    for path in emls:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert msg["To"].addresses[0].addr_spec == path.name.split("--")[0]
        assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
        assert path.with_suffix(".html").exists()
    # Meaning is on: Ada's topic has a sentence, and papers close to it say so.
    (ada,) = (p for p in emls if p.name.startswith("ada@"))
    assert "close to “Reasoning in large language models”" in ada.with_suffix(".html").read_text()
    return emls


def test_demo_writes_one_digest_per_matching_subscriber_and_is_safe_to_rerun(
    tmp_path: Path,
) -> None:
    root = _copy_repo(tmp_path / "repo")
    venv = str(
        Path(sys.executable).parent.parent
    )  # reuse this environment: no install in the fast suite
    first = _run_demo(root, {"NEWSLETTER_VENV": venv})
    assert first.returncode == 0, first.stderr
    emls = _check_outbox(root, first.stdout)
    assert "meaning is off" not in first.stdout + first.stderr
    # A developer's .env and environment pointing at a real relay and another
    # database: the demo stays in test mode, here.
    elsewhere = tmp_path / "production.db"
    (root / ".env").write_text(f"DATABASE_URL=sqlite:///{elsewhere}\nNEWSLETTER_HOME=/\n")
    again = _run_demo(root, {"NEWSLETTER_VENV": venv, "NEWSLETTER_DELIVERY": "smtp",
                             "NEWSLETTER_SMTP_HOST": "relay.invalid"})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 digests planned" in again.stdout
    assert sorted((root / "outbox").rglob("*.eml")) == emls
    assert not elsewhere.exists()


@pytest.mark.slow
def test_demo_bootstraps_its_own_virtualenv_from_nothing(tmp_path: Path) -> None:
    """What a newcomer runs on a fresh machine: no .venv, no database, no outbox."""
    root = _copy_repo(tmp_path / "repo")
    proc = _run_demo(root, {})
    assert proc.returncode == 0, proc.stderr
    assert (root / ".venv" / "bin" / "newsletter").exists()
    _check_outbox(root, proc.stdout)
