#!/usr/bin/env bash
# A second broker for CI: RabbitMQ 4.x from Debian 13's packages, in a chroot cached outside
# the repo, on ports of its own, with the deprecated features 4.3 denies denied here too.
#
#   scripts/rabbitmq4.sh start    build the chroot once (debootstrap), start the node; no-op if up
#   scripts/rabbitmq4.sh stop     stop the node and its epmd, unmount; no-op if down
#   scripts/rabbitmq4.sh status   exit 0 when the node answers
#   scripts/rabbitmq4.sh url      print the AMQP URL;  `url management` prints the management URL
#
# The machine's broker (5672/15672/15692/25672, epmd 4369) is never touched.
set -euo pipefail

CACHE="${KITTY_RABBITMQ4_CACHE:-/var/cache/kitty-rabbitmq4}"
ROOTFS="$CACHE/rootfs"
SUITE="${KITTY_RABBITMQ4_SUITE:-trixie}"
MIRROR="${KITTY_RABBITMQ4_MIRROR:-http://deb.debian.org/debian}"
AMQP_PORT="${KITTY_RABBITMQ4_PORT:-5673}"
MGMT_PORT="${KITTY_RABBITMQ4_MANAGEMENT_PORT:-15673}"
PROM_PORT="${KITTY_RABBITMQ4_PROMETHEUS_PORT:-15693}"
DIST_PORT="${KITTY_RABBITMQ4_DIST_PORT:-25673}"
EPMD_PORT="${KITTY_RABBITMQ4_EPMD_PORT:-4370}"
NODE="kitty4@localhost"
LOG="$CACHE/node.log"

die() { echo "rabbitmq4: $*" >&2; exit 1; }

# Every command in the chroot sees only the node's own ports, HOME and cookie.
in_root() {
  chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
    LANG=C.UTF-8 ERL_EPMD_PORT="$EPMD_PORT" RABBITMQ_NODENAME="$NODE" "$@"
}

running() { in_root /usr/lib/rabbitmq/bin/rabbitmq-diagnostics -q ping >/dev/null 2>&1; }

mounted() { mountpoint -q "$ROOTFS/$1"; }

mount_all() {
  mounted proc || mount -t proc proc "$ROOTFS/proc"
  mounted sys || mount -t sysfs sys "$ROOTFS/sys"
  mounted dev || mount --bind /dev "$ROOTFS/dev"
}

# Processes whose root is the chroot: the node, its epmd, CLI tools still exiting.
chroot_pids() {
  local root pid
  root="$(readlink -f "$ROOTFS")"
  for pid in /proc/[0-9]*; do
    [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ] && echo "${pid#/proc/}"
  done
  return 0
}

umount_all() {
  for dir in dev sys proc; do
    if mounted "$dir"; then umount "$ROOTFS/$dir" || umount -l "$ROOTFS/$dir"; fi
  done
}

build() {
  [ -f "$ROOTFS/.kitty-built" ] && return 0
  [ "$(id -u)" = 0 ] || die "building the chroot needs root (debootstrap, chroot, mount)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    echo "rabbitmq4: installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
  fi
  echo "rabbitmq4: building a Debian $SUITE chroot with rabbitmq-server in $ROOTFS (once)"
  rm -rf "$ROOTFS.partial"
  debootstrap --variant=minbase --include=rabbitmq-server "$SUITE" "$ROOTFS.partial" "$MIRROR" \
    >"$CACHE/build.log" 2>&1 || die "debootstrap failed; see $CACHE/build.log"
  # The package's own node may have been set up to start; ours runs with the settings below.
  rm -rf "$ROOTFS.partial/var/lib/rabbitmq/mnesia"
  touch "$ROOTFS.partial/.kitty-built"
  rm -rf "$ROOTFS"
  mv "$ROOTFS.partial" "$ROOTFS"
}

configure() {
  printf '127.0.0.1 localhost\n' >"$ROOTFS/etc/hosts"
  printf '[rabbitmq_management,rabbitmq_prometheus].\n' >"$ROOTFS/etc/rabbitmq/enabled_plugins"
  cat >"$ROOTFS/etc/rabbitmq/rabbitmq.conf" <<EOF
# Written by scripts/rabbitmq4.sh on every start.
listeners.tcp.local = 127.0.0.1:$AMQP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
prometheus.tcp.ip = 127.0.0.1
prometheus.tcp.port = $PROM_PORT
# What RabbitMQ 4.3 denies by default, denied here on 4.0 so a regression fails in CI.
deprecated_features.permit.global_qos = false
deprecated_features.permit.transient_nonexcl_queues = false
EOF
  # The distribution port is the node's own; its CLI tools find it through our epmd.
  cat >"$ROOTFS/etc/rabbitmq/rabbitmq-env.conf" <<EOF
NODENAME=$NODE
ERL_EPMD_ADDRESS=127.0.0.1
DIST_PORT=$DIST_PORT
EOF
}

start() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock 9
  build
  mount_all
  if running; then
    echo "rabbitmq4: already running on 127.0.0.1:$AMQP_PORT"
    return 0
  fi
  configure
  echo "rabbitmq4: starting $NODE on 127.0.0.1:$AMQP_PORT (management $MGMT_PORT)"
  # setsid: the node outlives this script and the CI step that ran it; fd 9 is not inherited.
  setsid chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/var/lib/rabbitmq LANG=C.UTF-8 ERL_EPMD_PORT="$EPMD_PORT" RABBITMQ_NODENAME="$NODE" \
    /usr/lib/rabbitmq/bin/rabbitmq-server >"$LOG" 2>&1 9>&- </dev/null &
  for _ in $(seq 1 120); do
    if running && curl -fs -o /dev/null -u guest:guest "http://127.0.0.1:$MGMT_PORT/api/overview"; then
      echo "rabbitmq4: $(in_root /usr/lib/rabbitmq/bin/rabbitmqctl -q version) is up"
      return 0
    fi
    sleep 1
  done
  die "the node did not come up; see $LOG"
}

stop() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/lock"
  flock 9
  [ -d "$ROOTFS" ] || return 0
  # Without /proc mounted the node cannot be running: start mounts it first.
  if mounted proc && running; then
    in_root /usr/lib/rabbitmq/bin/rabbitmqctl -q stop >/dev/null
    echo "rabbitmq4: stopped"
  fi
  # Unmount once nothing runs in the chroot any more (a busy /dev cannot be unmounted).
  # Our epmd exits only when asked, and only once the node has left it; the machine's
  # epmd (4369) is another process and stays.
  for attempt in $(seq 1 60); do
    [ -z "$(chroot_pids)" ] && break
    if mounted proc; then in_root epmd -kill >/dev/null 2>&1 || true; fi
    # Left over after 10 s (an epmd of the reliability tests' chroot nodes, say): every
    # process rooted in this chroot was started from it, so it is ours to end, by pid.
    if [ "$attempt" -ge 20 ]; then chroot_pids | xargs -r kill 2>/dev/null || true; fi
    sleep 0.5
  done
  [ -z "$(chroot_pids)" ] || die "processes still run in $ROOTFS: $(chroot_pids | tr '\n' ' ')"
  umount_all
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) [ -d "$ROOTFS/proc" ] && mounted proc && running && echo "rabbitmq4: running" || { echo "rabbitmq4: not running"; exit 1; } ;;
  url)
    if [ "${2:-}" = management ]; then
      echo "http://127.0.0.1:$MGMT_PORT"
    else
      echo "amqp://guest:guest@127.0.0.1:$AMQP_PORT//"
    fi
    ;;
  *) die "usage: $0 start|stop|status|url [management]" ;;
esac
