#!/usr/bin/env bash
# `make run`'s foreground part: Flower's and the console's logins, the URLs, then honcho.
# Broker check and topology have already run (make's prerequisites).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${BIN:-.venv/bin}"
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
CREDENTIALS_FILE="${KITTY_FLOWER_CREDENTIALS_FILE:-.flower-credentials}"
CONSOLE_CREDENTIALS_FILE="${KITTY_CONSOLE_CREDENTIALS_FILE:-.console-credentials}"

# honcho gives .env precedence over the shell's environment; read it the same way
# here so that the banner shows what the processes will really get.
ENV_FILE="${KITTY_ENV_FILE:-.env}"
if [ -f "$ENV_FILE" ]; then
  eval "$(ENV_FILE="$ENV_FILE" "$BIN/python" - <<'PY'
import os
import shlex
from honcho.environ import parse
with open(os.environ["ENV_FILE"]) as f:
    for key, value in parse(f.read()).items():
        print(f"export {key}={shlex.quote(value)}")
PY
)"
fi

# Flower never runs without basic auth. Without FLOWER_BASIC_AUTH we make one
# random password per checkout and keep it (mode 600, git-ignored), so a browser
# that saved it keeps working across restarts.
if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
  if [ ! -s "$CREDENTIALS_FILE" ]; then
    (umask 077 && printf 'kitty:%s\n' "$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))')" \
      >"$CREDENTIALS_FILE")
  fi
  FLOWER_BASIC_AUTH="$(head -n 1 "$CREDENTIALS_FILE")"
  flower_source="generated, kept in $CREDENTIALS_FILE"
else
  flower_source="from FLOWER_BASIC_AUTH"
fi
export FLOWER_BASIC_AUTH

# The console has no default login either: the same, kept in its own file.
if [ -z "${KITTY_CONSOLE_USER:-}" ] || [ -z "${KITTY_CONSOLE_PASSWORD:-}" ]; then
  if [ ! -s "$CONSOLE_CREDENTIALS_FILE" ]; then
    (umask 077 && printf 'kitty:%s\n' "$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))')" \
      >"$CONSOLE_CREDENTIALS_FILE")
  fi
  console_login="$(head -n 1 "$CONSOLE_CREDENTIALS_FILE")"
  KITTY_CONSOLE_USER="${console_login%%:*}"
  KITTY_CONSOLE_PASSWORD="${console_login#*:}"
  console_source="generated, kept in $CONSOLE_CREDENTIALS_FILE"
else
  console_source="from KITTY_CONSOLE_USER/KITTY_CONSOLE_PASSWORD"
fi
export KITTY_CONSOLE_USER KITTY_CONSOLE_PASSWORD

export FLOWER_PORT="${FLOWER_PORT:-5555}"
export KITTY_CONSOLE_PORT="${KITTY_CONSOLE_PORT:-8765}"
export KITTY_EXPORTER_PORT="${KITTY_EXPORTER_PORT:-9808}"
export KITTY_RESEARCH_METRICS_PORT="${KITTY_RESEARCH_METRICS_PORT:-9101}"
export KITTY_CAD_METRICS_PORT="${KITTY_CAD_METRICS_PORT:-9102}"
export KITTY_BRAIN_METRICS_PORT="${KITTY_BRAIN_METRICS_PORT:-9103}"
management="${KITTY_MANAGEMENT_URL:-http://localhost:15672}"
broker_metrics="$(printf '%s' "$management" | sed -E 's#:[0-9]+/*$#:15692#')"
flower_user="${FLOWER_BASIC_AUTH%%:*}"
flower_password="${FLOWER_BASIC_AUTH#*:}"
flower_password="${flower_password%%,*}"

cat <<BANNER
kitty_tasks is starting (Ctrl-C stops every process)
  Flower               http://127.0.0.1:${FLOWER_PORT}    user ${flower_user}, password ${flower_password} (${flower_source})
  Console              http://127.0.0.1:${KITTY_CONSOLE_PORT}    user ${KITTY_CONSOLE_USER}, password ${KITTY_CONSOLE_PASSWORD} (${console_source})
  RabbitMQ management  ${management}
  Platform metrics     http://127.0.0.1:${KITTY_EXPORTER_PORT}/metrics
  Worker metrics       http://127.0.0.1:${KITTY_RESEARCH_METRICS_PORT}/metrics (research, all ${KITTY_RESEARCH_PROCESSES:-2} processes), :${KITTY_CAD_METRICS_PORT} (cad), :${KITTY_BRAIN_METRICS_PORT} (brain)
  Flower metrics       http://127.0.0.1:${FLOWER_PORT}/metrics
  Broker metrics       ${broker_metrics}/metrics
Then, in another shell: make demo
BANNER

# Beat's schedule file (when each periodic task last ran) survives restarts here.
KITTY_RUN_DIR="${KITTY_RUN_DIR:-.run}"
mkdir -p "$KITTY_RUN_DIR"
KITTY_RUN_DIR="$(cd "$KITTY_RUN_DIR" && pwd)"
export KITTY_RUN_DIR

# Prefork workers keep their children's metrics in files (prometheus-client's
# multiprocess mode): one fresh directory per worker, removed when honcho is done.
KITTY_METRICS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/kitty-metrics.XXXXXX")"
trap 'rm -rf "$KITTY_METRICS_DIR"' EXIT
mkdir -p "$KITTY_METRICS_DIR/research" "$KITTY_METRICS_DIR/cad" "$KITTY_METRICS_DIR/brain"
export KITTY_METRICS_DIR

# The Procfile names commands (celery, kitty-tasks, python) as installed in the venv.
PATH="$BIN:$PATH"
export PATH
# Ctrl-C reaches honcho and this shell together (one foreground process group):
# honcho stops every process it started, then the trap tidies up.
# The research worker runs once per core (KITTY_RESEARCH_PROCESSES, default 2): a threads
# worker is one process on one GIL; each is named research@research.N.host and holds its
# thread count of unacked tasks at most, so priorities still hold (benchmarks/RESULTS.md).
"$BIN/honcho" start -f Procfile -e "$ENV_FILE" -c "research=${KITTY_RESEARCH_PROCESSES:-2}"
