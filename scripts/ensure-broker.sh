#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on RABBITMQ_URL's host and port, with the
# management and prometheus plugins; start or install one where this machine can.
set -euo pipefail

url="${RABBITMQ_URL:-amqp://guest:guest@localhost:5672//}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5672

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }
wait_for_broker() {
  for _ in $(seq 1 60); do reachable && return 0; sleep 1; done
  return 1
}
enable_plugins() {
  # Only a local, OS-installed broker is ours to configure.
  command -v rabbitmq-plugins >/dev/null 2>&1 || return 0
  rabbitmq-plugins enable --online rabbitmq_management rabbitmq_prometheus >/dev/null 2>&1 \
    || rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do
    curl -fs -o /dev/null "http://$host:15672/api/overview" -u guest:guest 2>/dev/null && return 0
    curl -fs -o /dev/null "http://$host:15672/" 2>/dev/null && return 0
    sleep 1
  done
}

if reachable; then
  echo "RabbitMQ answers on $host:$port"
  enable_plugins
  exit 0
fi
if [ "$host" != "localhost" ] && [ "$host" != "127.0.0.1" ]; then
  echo "RabbitMQ does not answer on $host:$port; start it there, or set RABBITMQ_URL" >&2
  exit 1
fi
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "starting RabbitMQ with docker compose"
  docker compose -f compose/docker-compose.yml up -d rabbitmq
  wait_for_broker && exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing rabbitmq-server with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >/dev/null
  elif command -v brew >/dev/null 2>&1; then
    echo "installing rabbitmq with Homebrew"
    brew install rabbitmq >/dev/null
  fi
fi
if command -v rabbitmq-server >/dev/null 2>&1; then
  echo "starting the local rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  if wait_for_broker; then
    rabbitmqctl await_startup >/dev/null 2>&1 || true
    enable_plugins
    exit 0
  fi
fi
cat >&2 <<MSG
No RabbitMQ broker answers on $host:$port, and none could be started here.
Install one of:
  - Docker:   docker compose -f compose/docker-compose.yml up -d rabbitmq
  - Debian:   sudo apt-get install rabbitmq-server && sudo rabbitmq-server -detached
  - macOS:    brew install rabbitmq && brew services start rabbitmq
then run this command again (or set RABBITMQ_URL to a broker you have).
MSG
exit 1
