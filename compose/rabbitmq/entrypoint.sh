#!/bin/sh
# Seeds the broker's administrator (and a cluster's Erlang cookie) from the environment,
# adds the service accounts, then starts RabbitMQ through the image's own entrypoint.
#
# Why: with load_definitions set, RabbitMQ creates no default user at all (and we
# want no guest user), so the administrator comes from RABBITMQ_USER/RABBITMQ_PASSWORD
# as a second definitions file next to the generated topology (definitions.json), and
# each KITT service's own user from access.json (`kitty-tasks access export`: hashes only).
set -eu

: "${RABBITMQ_USER:?set RABBITMQ_USER (see compose/.env.example)}"
: "${RABBITMQ_PASSWORD:?set RABBITMQ_PASSWORD (see compose/.env.example)}"

DEFINITIONS_DIR=/tmp/kitty-definitions   # rabbitmq.conf's load_definitions
TOPOLOGY=/etc/rabbitmq/kitty/definitions.json
ACCESS=/etc/rabbitmq/kitty/access.json

json_escape() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

if [ ! -f "$ACCESS" ]; then
  echo "no service accounts at compose/rabbitmq/access.json: run 'kitty-tasks access export'" \
       "with the KITTY_PASSWORD_* variables of compose/.env set (docs/security.md)" >&2
  exit 1
fi

mkdir -p "$DEFINITIONS_DIR"
cp "$TOPOLOGY" "$DEFINITIONS_DIR/10-topology.json"
cp "$ACCESS" "$DEFINITIONS_DIR/30-access.json"
user="$(json_escape "$RABBITMQ_USER")"
password="$(json_escape "$RABBITMQ_PASSWORD")"
umask 077
cat >"$DEFINITIONS_DIR/20-users.json" <<JSON
{
  "vhosts": [{"name": "/"}],
  "users": [{"name": "$user", "password": "$password", "tags": ["administrator"]}],
  "permissions": [{"user": "$user", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}]
}
JSON
unset RABBITMQ_PASSWORD

# A cluster's nodes must share one cookie; the file is the supported way to set it.
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" >/var/lib/rabbitmq/.erlang.cookie
  chmod 400 /var/lib/rabbitmq/.erlang.cookie
  unset RABBITMQ_ERLANG_COOKIE
fi

if [ "$(id -u)" = 0 ]; then
  chown -R rabbitmq:rabbitmq "$DEFINITIONS_DIR"
  [ -f /var/lib/rabbitmq/.erlang.cookie ] && chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
fi
exec docker-entrypoint.sh "$@"
