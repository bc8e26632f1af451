"""Every setting with its default and what it does: the source of config/.env.example.

``newsletter config --example`` prints the file; tests/test_config.py checks the two
agree, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "NEWSLETTER_"
REPO_ENV_EXAMPLE = Path(__file__).resolve().parent.parent / "config" / ".env.example"

# name -> (default, description). The description is what .env.example shows.
SETTINGS_DOC: dict[str, tuple[str, str]] = {
    "NEWSLETTER_HOME": (".", "Directory the relative defaults below live in."),
    "DATABASE_URL": (
        "sqlite:///data/newsletter.db",
        "SQLAlchemy URL; e.g. postgresql+psycopg://user@127.0.0.1:5432/newsletter. "
        "A relative SQLite path is taken from NEWSLETTER_HOME.",
    ),
    "NEWSLETTER_CORPUS_DIR": ("corpus", "Where page dumps (*.txt) arrive."),
    "NEWSLETTER_OUTBOX_DIR": ("outbox", "Test mode: where the file backend writes .eml files."),
    "NEWSLETTER_DELIVERY": ("file", "How digests leave: file (test mode), smtp, memory."),
    "NEWSLETTER_FROM": ("papers@localhost", "Sender address of every digest."),
    "NEWSLETTER_FROM_NAME": ("Paper Digest", "Sender display name."),
    "NEWSLETTER_BASE_URL": (
        "http://localhost:8000",
        "Public URL of the web app; unsubscribe and preference links start with it.",
    ),
    "NEWSLETTER_SECRET_KEY": (
        "",
        "Signs unsubscribe and preference tokens (32+ random characters). Unset: one is "
        "generated once into data/secret_key; set it in production.",
    ),
    "NEWSLETTER_DEFAULT_TIMEZONE": ("UTC", "IANA zone for subscribers added without --tz."),
    "NEWSLETTER_DEFAULT_SEND_AT": ("08:00", "Local send time for subscribers added without one."),
    "NEWSLETTER_DIGEST_MAX_PAPERS": ("20", "Most papers in one digest; the rest are counted."),
    "NEWSLETTER_FIRST_DIGEST_DAYS": (
        "7",
        "A subscriber's first digest covers papers first seen this many days back (at most 36500).",
    ),
    "NEWSLETTER_SMTP_HOST": ("localhost", "SMTP relay (with NEWSLETTER_DELIVERY=smtp)."),
    "NEWSLETTER_SMTP_PORT": ("25", "Relay port: 25 or 587 (starttls), 465 (implicit)."),
    "NEWSLETTER_SMTP_TLS": (
        "none",
        "none, starttls or implicit; a login needs one of the last two, unless the relay is "
        "on this machine.",
    ),
    "NEWSLETTER_SMTP_USERNAME": ("", "Relay login; empty: no AUTH."),
    "NEWSLETTER_SMTP_PASSWORD": ("", "Relay password (a secret: set it in the environment)."),
    "NEWSLETTER_SMTP_TIMEOUT": (
        "30",
        "Seconds to wait for the relay before a try counts as failed.",
    ),
    "NEWSLETTER_SMTP_POOL_SIZE": ("4", "Parallel connections to the relay."),
    "NEWSLETTER_SMTP_MAX_PER_CONNECTION": (
        "100",
        "Messages sent on one connection before reconnecting.",
    ),
    "NEWSLETTER_SMTP_RATE": ("0", "Most messages per second in all (0: no limit)."),
    "NEWSLETTER_LEASE_SECONDS": (
        "300",
        "How long a worker holds a claimed digest; a dead worker's are taken back after this.",
    ),
    "NEWSLETTER_SEND_WORKERS": (
        "auto",
        "Delivery processes `newsletter send` runs beside planning: a number, or auto "
        "for one per core (the fastest); each has its own SMTP pool, and they share "
        "NEWSLETTER_SMTP_RATE.",
    ),
    "NEWSLETTER_PLAN_WORKERS": (
        "1",
        "Processes `newsletter send` plans digests in (a number, or auto for one per core): "
        "for lists of hundreds of thousands. The service plans in its own process.",
    ),
    "NEWSLETTER_WEB_HOST": (
        "127.0.0.1",
        "Address `newsletter serve` listens on (0.0.0.0 in a container behind a proxy).",
    ),
    "NEWSLETTER_WEB_PORT": ("8000", "Port of the web pages (unsubscribe, archive, /healthz)."),
    "NEWSLETTER_CONFIRM_HOURS": (
        "48",
        "A web sign-up not confirmed within this many hours is forgotten.",
    ),
    "NEWSLETTER_ADMIN_TOKEN": (
        "",
        "Bearer token for the admin API under /api/ (32+ characters); empty: API off.",
    ),
    "NEWSLETTER_LOG_FORMAT": ("text", "Log lines as text or json (one object per line)."),
    "NEWSLETTER_LOG_LEVEL": ("info", "debug, info, warning or error."),
    "NEWSLETTER_INGEST_MINUTES": ("5", "`newsletter run`: how often to look for new corpus files."),
    "NEWSLETTER_PLAN_MINUTES": ("5", "`newsletter run`: how often to plan digests that are due."),
    "NEWSLETTER_OPERATOR_EMAIL": ("", "Where the daily operator report goes; empty: no report."),
    "NEWSLETTER_REPORT_AT": ("07:00", "UTC time of the daily operator report."),
    "NEWSLETTER_SEND_EMPTY": (
        "no",
        "yes: a subscriber with nothing new gets a short 'nothing matched today' note.",
    ),
    "NEWSLETTER_TRUSTED_PROXIES": (
        "",
        "Comma-separated addresses of your reverse proxies; only their X-Forwarded-For "
        "is believed (sign-up rate limits go by client address). Empty: none.",
    ),
    "NEWSLETTER_CORPUS_MAX_MB": (
        "64",
        "Largest corpus file read, in MiB; a larger one is refused with a message.",
    ),
    "NEWSLETTER_SOURCES": (
        "dumps",
        "Where papers come from, comma-separated: dumps (the corpus folder; offline), "
        "daily_papers (Hugging Face Daily Papers), arxiv (arXiv category feeds). "
        "`newsletter run` reads the folder only when dumps is listed.",
    ),
    "NEWSLETTER_DAILY_PAPERS_URL": (
        "https://huggingface.co/api/daily_papers",
        "Daily Papers API; ?date=YYYY-MM-DD is added, one request per day.",
    ),
    "NEWSLETTER_ARXIV_CATEGORIES": (
        "cs.CL,cs.LG,cs.CV,cs.AI",
        "arXiv categories fetched (comma-separated), one feed each.",
    ),
    "NEWSLETTER_ARXIV_RSS_URL": (
        "https://rss.arxiv.org/rss/",
        "arXiv's daily announcements; the category is appended (…/rss/cs.CL).",
    ),
    "NEWSLETTER_ARXIV_API_URL": (
        "https://export.arxiv.org/api/query",
        "arXiv's query API, for `newsletter sources fetch --since` (one query per "
        "category and day).",
    ),
    "NEWSLETTER_FETCH_MINUTES": (
        "60",
        "How often `newsletter run` fetches the live sources; no source is asked again "
        "sooner (nor before its back-off after an error) unless forced.",
    ),
    "NEWSLETTER_FETCH_TIMEOUT": (
        "30",
        "Seconds a live source may take to connect, between two pieces of an answer, "
        "and for a whole answer.",
    ),
    "NEWSLETTER_FETCH_MAX_MB": (
        "20",
        "Largest answer taken from a live source, in MiB; a larger one is refused unread.",
    ),
    "NEWSLETTER_FETCH_DELAY": (
        "3",
        "Seconds between two requests to one host (arXiv asks for 3).",
    ),
    "NEWSLETTER_DKIM_DOMAIN": ("", "DKIM signing domain (d=); empty: no DKIM signature."),
    "NEWSLETTER_DKIM_SELECTOR": (
        "",
        "DKIM selector (s=): the key is at <selector>._domainkey.<domain>.",
    ),
    "NEWSLETTER_DKIM_KEY_FILE": (
        "",
        "PEM RSA private key file for DKIM (keep it secret: mount it, never commit it).",
    ),
    "NEWSLETTER_RETRY_BASE_SECONDS": ("60", "First retry delay; doubles each try, with jitter."),
    "NEWSLETTER_RETRY_MAX_SECONDS": ("3600", "Longest delay between two tries."),
    "NEWSLETTER_RETRY_DEADLINE_HOURS": (
        "48",
        "Give up on a digest this long after it was planned (a soft bounce).",
    ),
    "NEWSLETTER_SOFT_BOUNCE_LIMIT": (
        "3",
        "Soft bounces in a row that suppress a subscriber (a hard bounce suppresses at once).",
    ),
    "NEWSLETTER_PREVIEW_MAX_PAPERS": (
        "5000",
        "The preference centre counts each topic's matches among at most this many of the "
        "last 30 days' papers, the newest (bounds the web process's memory).",
    ),
    "NEWSLETTER_BOUNCE_DOMAIN": (
        "",
        "Where bounces and complaints come back: each message's envelope sender becomes "
        "LOCALPART+TOKEN@this domain (VERP, signed per digest). Empty: VERP off.",
    ),
    "NEWSLETTER_BOUNCE_LISTEN": (
        "",
        "lmtp://HOST:PORT (or smtp://) where `newsletter run` takes the bounce mailbox's "
        "mail from the MTA. Empty: no listener (replay files with `bounces process`).",
    ),
    "NEWSLETTER_SES_TOPIC_ARN": (
        "",
        "The SNS topic Amazon SES reports bounces and complaints to; POST /webhooks/ses "
        "takes only messages of this topic, signed by SNS. Empty: that webhook is off.",
    ),
    "NEWSLETTER_SNS_CERT_HOSTS": (
        "sns.*.amazonaws.com",
        "Hosts (globs, comma-separated) SNS signing certificates may be fetched from, over https.",
    ),
    "NEWSLETTER_POSTMARK_WEBHOOK_SECRET": (
        "",
        "The basic-auth password in Postmark's webhook URL for POST /webhooks/postmark "
        "(32+ characters). Empty: that webhook is off.",
    ),
    "NEWSLETTER_MAILGUN_SIGNING_KEY": (
        "",
        "Mailgun's webhook signing key, for POST /webhooks/mailgun. Empty: that webhook is off.",
    ),
    "NEWSLETTER_BOUNCE_LOCALPART": (
        "bounces",
        "The local part of the VERP return path (the mailbox an MTA forwards bounces from).",
    ),
}


def env_example() -> str:
    """The text of config/.env.example, generated from SETTINGS_DOC so the two cannot drift."""
    lines = [
        "# newsletter settings. Copy to .env (or set in the environment) and edit.",
        "# Every line shows the default; the embedded mode needs none of them.",
        "",
    ]
    for name, (default, doc) in SETTINGS_DOC.items():
        lines += [f"# {doc}", f"# {name}={default}", ""]
    return "\n".join(lines)
