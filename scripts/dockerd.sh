#!/usr/bin/env bash
# Start or stop a Docker engine for the tests, without systemd.
#   scripts/dockerd.sh start   start dockerd unless one already answers; remember that we started it
#   scripts/dockerd.sh stop    stop dockerd only if `start` started it
# The flags keep dockerd off the host's network setup: containers use network_mode="host".
set -euo pipefail
PIDFILE=${DOCKERD_PIDFILE:-/tmp/tfs-sidecar-dockerd.pid}
LOG=${DOCKERD_LOG:-/tmp/tfs-sidecar-dockerd.log}

case "${1:-}" in
  start)
    if docker info >/dev/null 2>&1; then
      echo "dockerd: already running, leaving it as it is"
      exit 0
    fi
    command -v dockerd >/dev/null || { echo "dockerd: not installed (apt-get install docker.io)" >&2; exit 1; }
    nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 60); do
      if docker info >/dev/null 2>&1; then echo "dockerd: started (pid $(cat "$PIDFILE"))"; exit 0; fi
      sleep 1
    done
    echo "dockerd: did not answer within 60 s; its log:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
    ;;
  stop)
    [ -f "$PIDFILE" ] || exit 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    rm -f "$PIDFILE"
    echo "dockerd: stopped (pid $pid)"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
