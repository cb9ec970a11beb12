#!/usr/bin/env bash
# What the test suite needs beside the broker, started (and installed with apt-get where
# absent) idempotently: RabbitMQ's management and prometheus plugins, Redis, PostgreSQL with
# a "test" database, Debian's chromium, and the second broker (RabbitMQ 4.x in a chroot).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() { { apt-get update -qq && apt-get install -y -qq "$@"; } >/dev/null; }

# The broker's HTTP API and metrics (health, exporter, console and alert tests read them).
rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null

# Redis: one of the result stores, and the store of Celery's own integration tests.
if ! redis-cli ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes >/dev/null
  for _ in $(seq 1 30); do redis-cli ping >/dev/null 2>&1 && break; sleep 1; done
fi

# PostgreSQL: user postgres over TCP without a password (trust on 127.0.0.1) and a
# database "test", for the result-store tests.
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
if ! pg_ready; then
  command -v pg_lsclusters >/dev/null || apt_install postgresql
  version="$(pg_lsclusters -h | awk 'NR == 1 {print $1}')"
  if [ -z "$version" ]; then
    version="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
    pg_createcluster "$version" main >/dev/null
  fi
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  grep -q '^host all all 127.0.0.1/32 trust' "$hba" \
    || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  pg_ctlcluster "$version" main start || service postgresql start
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test"
fi

# The console's browser tests drive Debian's chromium through Playwright (never a browser
# Playwright would download).
command -v chromium >/dev/null 2>&1 || apt_install chromium

# The second broker, RabbitMQ 4.x from Debian 13 (chroot built once, cached outside the repo).
./scripts/rabbitmq4.sh start
