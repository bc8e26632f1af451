"""Settings from the environment and a ``.env`` file: the only module reading os.environ.

Every setting is ``NEWSLETTER_<NAME>`` (plus ``DATABASE_URL``); the defaults
make the embedded mode work with no configuration at all: SQLite under
``data/``, corpus from ``corpus/``, file delivery into ``outbox/``, all relative
to the working directory (``NEWSLETTER_HOME`` moves them together).
``config/.env.example`` documents each one; keep the two in step
(tests/test_config.py checks that).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from email.headerregistry import Address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from newsletter.errors import ConfigError
from newsletter.setting_values import (
    DNS_LABELS_RE,
    arxiv_categories_setting,
    bounce_domain_setting,
    bounce_listen_setting,
    bounce_localpart_setting,
    choice_setting,
    comma_list,
    http_url_setting,
    int_setting,
    number_setting,
    port_setting,
    proxies_setting,
    sources_setting,
    workers_setting,
)
from newsletter.settings_doc import PREFIX, SETTINGS_DOC
from newsletter.text import has_unsafe, terminal_safe
from newsletter.values import validate_send_at, validate_timezone

DELIVERY_BACKENDS = ("file", "smtp", "memory")
# Variables with our prefix that are not settings: read by scripts and tests.
NOT_SETTINGS = frozenset({"NEWSLETTER_VENV", "NEWSLETTER_TEST_PG"})
SMTP_TLS_MODES = ("none", "starttls", "implicit")
# Where papers come from: the corpus folder (offline), and the live sources fetched.
LIVE_SOURCE_NAMES = ("daily_papers", "arxiv")
# An arXiv category: "cs.CL", "math.AP", "astro-ph.GA", "hep-th", "cond-mat.stat-mech".


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    tls: str  # one of SMTP_TLS_MODES
    username: str
    password: str = field(repr=False)  # never printed, never logged
    timeout: float
    pool_size: int
    max_per_connection: int
    rate: float  # messages per second across all connections; 0: unlimited


@dataclass(frozen=True, slots=True)
class DkimSettings:
    domain: str  # d=: the domain whose DNS publishes the key, normally the From domain
    selector: str  # s=: the key's name under <selector>._domainkey.<domain>
    key_file: Path  # PEM private key (a secret: a file the environment points to)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float
    max_seconds: float
    deadline_hours: float
    soft_bounce_limit: int


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    database_url: str = field(repr=False)  # may hold a password: see describe()
    corpus_dir: Path
    outbox_dir: Path
    delivery: str
    from_address: str
    from_name: str
    base_url: str
    secret_key: str = field(repr=False)  # never printed, never logged
    default_timezone: str
    default_send_at: str
    digest_max_papers: int
    first_digest_days: int
    smtp: SmtpSettings
    retry: RetryPolicy
    lease_seconds: float
    send_workers: int
    plan_workers: int
    dkim: DkimSettings | None
    web_host: str
    web_port: int
    confirm_hours: float
    log_format: str
    log_level: str
    ingest_minutes: float
    plan_minutes: float
    operator_email: str
    report_at: str
    send_empty: bool
    trusted_proxies: tuple[str, ...]  # addresses whose X-Forwarded-For is believed
    corpus_max_bytes: int
    admin_token: str = field(repr=False)  # never printed, never logged
    sources: tuple[str, ...]  # of SOURCE_NAMES, in the order given
    daily_papers_url: str
    arxiv_categories: tuple[str, ...]
    arxiv_rss_url: str
    arxiv_api_url: str
    fetch_minutes: float
    fetch_timeout: float
    fetch_max_bytes: int
    fetch_delay: float  # seconds between two requests to one host
    preview_max_papers: int  # the preference centre's preview indexes at most these
    bounce_localpart: str  # VERP: localpart+TOKEN@bounce_domain
    bounce_domain: str  # "" : return paths are the From address (VERP off)
    bounce_listen: str  # "lmtp://host:port" for the bounce listener in `run`; "" off
    ses_topic_arn: str  # the SNS topic SES reports to; "" : the SES webhook is off
    sns_cert_hosts: tuple[str, ...]  # hosts (globs) SNS signing certificates may come from
    postmark_webhook_secret: str = field(repr=False)  # "" : the Postmark webhook is off
    mailgun_signing_key: str = field(repr=False)  # "" : the Mailgun webhook is off

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def live_sources(self) -> tuple[str, ...]:
        """The configured sources fetched over the network (empty: offline)."""
        return tuple(s for s in self.sources if s in LIVE_SOURCE_NAMES)

    @property
    def message_id_domain(self) -> str:
        return self.from_address.rpartition("@")[2]


def _env(dotenv_path: Path | None, environ: dict[str, str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    path = dotenv_path if dotenv_path is not None else Path(".env")
    if path.is_file():
        # The real environment wins over the file, as python-dotenv's load_dotenv does.
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return values


def load_settings(
    *, dotenv_path: Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read and validate every setting; a bad value raises ConfigError naming it."""
    env = _env(dotenv_path, environ)

    def get(name: str) -> str:
        return env.get(name, SETTINGS_DOC[name][0]).strip()

    unknown = [
        k
        for k in sorted(env)
        if k.startswith(PREFIX) and k not in SETTINGS_DOC and k not in NOT_SETTINGS
    ]
    if unknown:
        raise ConfigError(setting=unknown[0], message="unknown setting (a typo?)")

    def expanded(name: str) -> Path:
        try:
            return Path(get(name)).expanduser()
        except RuntimeError:  # ~someone who is not a user here
            raise ConfigError(
                setting=name, message="names a home directory that does not exist"
            ) from None

    home = expanded("NEWSLETTER_HOME")

    def path(name: str) -> Path:
        p = expanded(name)
        return p if p.is_absolute() else home / p

    database_url = get("DATABASE_URL")
    if database_url.startswith("sqlite:///") and not database_url.startswith("sqlite:////"):
        rel = database_url.removeprefix("sqlite:///")
        if rel and rel != ":memory:" and not Path(rel).is_absolute():
            database_url = f"sqlite:///{(home / rel).resolve()}"
    if not database_url.startswith(("sqlite:", "postgresql")):
        raise ConfigError(
            setting="DATABASE_URL",
            message="only sqlite:/// and postgresql+psycopg:// are supported",
        )
    try:  # as the engine will read it (the message never quotes it: it may hold a password)
        make_url(database_url).port  # noqa: B018  # a port that is no number raises here
    except (ArgumentError, ValueError):
        raise ConfigError(setting="DATABASE_URL", message="not a database URL") from None

    delivery = get("NEWSLETTER_DELIVERY").lower()
    if delivery not in DELIVERY_BACKENDS:
        raise ConfigError(
            setting="NEWSLETTER_DELIVERY",
            message=f"expected one of {', '.join(DELIVERY_BACKENDS)}, got {delivery!r}",
        )

    from_address = get("NEWSLETTER_FROM")
    try:
        Address(addr_spec=from_address)
    except (ValueError, IndexError):
        raise ConfigError(
            setting="NEWSLETTER_FROM", message=f"not an email address: {from_address!r}"
        ) from None
    if "@" not in from_address:
        raise ConfigError(
            setting="NEWSLETTER_FROM", message=f"not an email address: {from_address!r}"
        )

    base_url = get("NEWSLETTER_BASE_URL").rstrip("/")
    try:  # every link in every digest starts with it, and so does List-Unsubscribe
        parts = urlsplit(base_url)
        parts.port  # noqa: B018  # a port that is no number raises here
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or has_unsafe(base_url)
        or any(c in base_url for c in ' <>"\\')
    ):
        raise ConfigError(
            setting="NEWSLETTER_BASE_URL",
            message=f"expected an http(s) URL, got {terminal_safe(base_url)!r}",
        )

    from_name = get("NEWSLETTER_FROM_NAME")
    if has_unsafe(from_name):  # it goes into every From header
        raise ConfigError(
            setting="NEWSLETTER_FROM_NAME",
            message=f"holds a control character: {terminal_safe(from_name)!r}",
        )

    secret_key = get("NEWSLETTER_SECRET_KEY")
    if secret_key and len(secret_key) < 32:
        raise ConfigError(
            setting="NEWSLETTER_SECRET_KEY", message="must be at least 32 characters long"
        )

    return Settings(
        home=home,
        database_url=database_url,
        corpus_dir=path("NEWSLETTER_CORPUS_DIR"),
        outbox_dir=path("NEWSLETTER_OUTBOX_DIR"),
        delivery=delivery,
        from_address=from_address,
        from_name=from_name,
        base_url=base_url,
        secret_key=secret_key,
        default_timezone=validate_timezone(
            get("NEWSLETTER_DEFAULT_TIMEZONE"), setting="NEWSLETTER_DEFAULT_TIMEZONE"
        ),
        default_send_at=validate_send_at(
            get("NEWSLETTER_DEFAULT_SEND_AT"), setting="NEWSLETTER_DEFAULT_SEND_AT"
        ),
        digest_max_papers=int_setting(
            "NEWSLETTER_DIGEST_MAX_PAPERS", get("NEWSLETTER_DIGEST_MAX_PAPERS"), minimum=1
        ),
        first_digest_days=int_setting(
            "NEWSLETTER_FIRST_DIGEST_DAYS",
            get("NEWSLETTER_FIRST_DIGEST_DAYS"),
            minimum=0,
            maximum=36_500,
        ),
        smtp=_smtp(get),
        lease_seconds=number_setting("NEWSLETTER_LEASE_SECONDS", get, minimum=0.1),
        send_workers=workers_setting("NEWSLETTER_SEND_WORKERS", get("NEWSLETTER_SEND_WORKERS")),
        plan_workers=workers_setting("NEWSLETTER_PLAN_WORKERS", get("NEWSLETTER_PLAN_WORKERS")),
        dkim=_dkim(get, home),
        web_host=get("NEWSLETTER_WEB_HOST"),
        web_port=port_setting("NEWSLETTER_WEB_PORT", get),
        confirm_hours=number_setting("NEWSLETTER_CONFIRM_HOURS", get, minimum=0.01),
        log_format=choice_setting("NEWSLETTER_LOG_FORMAT", get, ("text", "json")),
        log_level=choice_setting(
            "NEWSLETTER_LOG_LEVEL", get, ("debug", "info", "warning", "error")
        ),
        ingest_minutes=number_setting("NEWSLETTER_INGEST_MINUTES", get, minimum=0.01),
        plan_minutes=number_setting("NEWSLETTER_PLAN_MINUTES", get, minimum=0.01),
        operator_email=_operator_email(get("NEWSLETTER_OPERATOR_EMAIL")),
        report_at=validate_send_at(get("NEWSLETTER_REPORT_AT"), setting="NEWSLETTER_REPORT_AT"),
        send_empty=choice_setting("NEWSLETTER_SEND_EMPTY", get, ("no", "yes")) == "yes",
        trusted_proxies=proxies_setting(get("NEWSLETTER_TRUSTED_PROXIES")),
        corpus_max_bytes=int(
            number_setting("NEWSLETTER_CORPUS_MAX_MB", get, minimum=0.001) * 2**20
        ),
        admin_token=_admin_token(get("NEWSLETTER_ADMIN_TOKEN")),
        bounce_localpart=bounce_localpart_setting(get("NEWSLETTER_BOUNCE_LOCALPART")),
        preview_max_papers=int_setting(
            "NEWSLETTER_PREVIEW_MAX_PAPERS", get("NEWSLETTER_PREVIEW_MAX_PAPERS"), minimum=1
        ),
        bounce_domain=bounce_domain_setting(get("NEWSLETTER_BOUNCE_DOMAIN")),
        bounce_listen=bounce_listen_setting(get("NEWSLETTER_BOUNCE_LISTEN")),
        ses_topic_arn=get("NEWSLETTER_SES_TOPIC_ARN").strip(),
        sns_cert_hosts=tuple(comma_list(get("NEWSLETTER_SNS_CERT_HOSTS").lower())),
        postmark_webhook_secret=_admin_token(
            get("NEWSLETTER_POSTMARK_WEBHOOK_SECRET"), "NEWSLETTER_POSTMARK_WEBHOOK_SECRET"
        ),
        mailgun_signing_key=get("NEWSLETTER_MAILGUN_SIGNING_KEY").strip(),
        sources=sources_setting(get("NEWSLETTER_SOURCES")),
        daily_papers_url=http_url_setting("NEWSLETTER_DAILY_PAPERS_URL", get),
        arxiv_categories=arxiv_categories_setting(get("NEWSLETTER_ARXIV_CATEGORIES")),
        arxiv_rss_url=http_url_setting("NEWSLETTER_ARXIV_RSS_URL", get),
        arxiv_api_url=http_url_setting("NEWSLETTER_ARXIV_API_URL", get),
        fetch_minutes=number_setting("NEWSLETTER_FETCH_MINUTES", get, minimum=0.01),
        fetch_timeout=number_setting("NEWSLETTER_FETCH_TIMEOUT", get, minimum=0.01),
        fetch_max_bytes=int(number_setting("NEWSLETTER_FETCH_MAX_MB", get, minimum=0.001) * 2**20),
        fetch_delay=number_setting("NEWSLETTER_FETCH_DELAY", get, minimum=0),
        retry=RetryPolicy(
            base_seconds=number_setting("NEWSLETTER_RETRY_BASE_SECONDS", get, minimum=0.001),
            max_seconds=number_setting("NEWSLETTER_RETRY_MAX_SECONDS", get, minimum=0.001),
            deadline_hours=number_setting("NEWSLETTER_RETRY_DEADLINE_HOURS", get, minimum=0),
            soft_bounce_limit=int_setting(
                "NEWSLETTER_SOFT_BOUNCE_LIMIT", get("NEWSLETTER_SOFT_BOUNCE_LIMIT"), minimum=1
            ),
        ),
    )


_DKIM_NAMES = ("NEWSLETTER_DKIM_DOMAIN", "NEWSLETTER_DKIM_SELECTOR", "NEWSLETTER_DKIM_KEY_FILE")


def _dkim(get: Callable[[str], str], home: Path) -> DkimSettings | None:
    """All three DKIM settings, or none (signing off); the key must be readable now."""
    domain, selector, key = (get(name).strip() for name in _DKIM_NAMES)
    if not (domain or selector or key):
        return None
    for name, value in zip(_DKIM_NAMES, (domain, selector, key), strict=True):
        if not value:
            raise ConfigError(
                setting=name, message="DKIM signing needs all of " + ", ".join(_DKIM_NAMES)
            )
    for name, value in (("NEWSLETTER_DKIM_DOMAIN", domain), ("NEWSLETTER_DKIM_SELECTOR", selector)):
        if not DNS_LABELS_RE.fullmatch(value):
            raise ConfigError(setting=name, message=f"not a DNS name: {value!r}")
    path = Path(key) if Path(key).is_absolute() else home / key
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            setting="NEWSLETTER_DKIM_KEY_FILE", message=f"cannot read {path}: {exc.strerror}"
        ) from None
    if b"PRIVATE KEY-----" not in pem:
        raise ConfigError(
            setting="NEWSLETTER_DKIM_KEY_FILE", message=f"{path} is not a PEM private key"
        )
    return DkimSettings(domain=domain, selector=selector, key_file=path)


def _operator_email(value: str) -> str:
    value = value.strip()
    if value and ("@" not in value or any(c.isspace() or ord(c) < 32 for c in value)):
        raise ConfigError(setting="NEWSLETTER_OPERATOR_EMAIL", message=f"not an address: {value!r}")
    return value


def _admin_token(value: str, setting: str = "NEWSLETTER_ADMIN_TOKEN") -> str:
    if value and len(value) < 32:
        raise ConfigError(setting=setting, message="too short to be unguessable (32+ characters)")
    return value


_SECRET_PARAMETER = ("password", "secret", "token", "key")  # libpq: password, sslpassword


def sa_url_masked(url: str) -> str:
    """A database URL with its passwords hidden, for display: the one after the user
    name, and any query parameter that carries one (``?password=``, ``sslpassword=``).
    Read as the engine reads it (SQLAlchemy's parser): a password holding "/", "?" or
    "#" ends a URL's host for ``urlsplit``, which then found no password to hide."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "(not a database URL)"
    secret = {k: "***" for k in parsed.query if any(w in k.lower() for w in _SECRET_PARAMETER)}
    if parsed.password is None and not secret:
        return url  # nothing to hide: as typed (rendering would escape ":memory:")
    shown = parsed.update_query_dict(secret).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # the query's values come out escaped


def _smtp(get: Callable[[str], str]) -> SmtpSettings:
    tls = get("NEWSLETTER_SMTP_TLS").lower()
    if tls not in SMTP_TLS_MODES:
        raise ConfigError(
            setting="NEWSLETTER_SMTP_TLS",
            message=f"expected one of {', '.join(SMTP_TLS_MODES)}, got {tls!r}",
        )
    host = get("NEWSLETTER_SMTP_HOST")
    if not host or any(c.isspace() for c in host):
        raise ConfigError(setting="NEWSLETTER_SMTP_HOST", message=f"not a host name: {host!r}")
    port = port_setting("NEWSLETTER_SMTP_PORT", get)
    username, password = get("NEWSLETTER_SMTP_USERNAME"), get("NEWSLETTER_SMTP_PASSWORD")
    if (username or password) and tls == "none" and not on_this_machine(host):
        raise ConfigError(
            setting="NEWSLETTER_SMTP_TLS",
            message=f"is none, so the SMTP login would cross the network to {host!r} in "
            "the clear: use starttls or implicit (a relay on this machine may go without)",
        )
    return SmtpSettings(
        host=host,
        port=port,
        tls=tls,
        username=username,
        password=password,
        timeout=number_setting("NEWSLETTER_SMTP_TIMEOUT", get, minimum=0.001),
        pool_size=int_setting(
            "NEWSLETTER_SMTP_POOL_SIZE", get("NEWSLETTER_SMTP_POOL_SIZE"), minimum=1
        ),
        max_per_connection=int_setting(
            "NEWSLETTER_SMTP_MAX_PER_CONNECTION",
            get("NEWSLETTER_SMTP_MAX_PER_CONNECTION"),
            minimum=1,
        ),
        rate=number_setting("NEWSLETTER_SMTP_RATE", get, minimum=0),
    )


def on_this_machine(host: str) -> bool:
    """``localhost`` or a loopback address."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def describe(settings: Settings) -> dict[str, Any]:
    """Settings for display, the secret masked."""
    shown = {f.name: getattr(settings, f.name) for f in fields(settings)}
    shown["database_url"] = sa_url_masked(settings.database_url)
    shown["secret_key"] = "(set)" if settings.secret_key else "(generated in data/secret_key)"
    shown["smtp"] = repr(settings.smtp) + (" password=(set)" if settings.smtp.password else "")
    shown["admin_token"] = "(set)" if settings.admin_token else "(unset: admin API off)"
    for name in ("postmark_webhook_secret", "mailgun_signing_key"):
        shown[name] = "(set)" if getattr(settings, name) else "(unset: webhook off)"
    shown["sources"] = ",".join(settings.sources)
    shown["arxiv_categories"] = ",".join(settings.arxiv_categories)
    return {k: str(v) for k, v in shown.items()}
