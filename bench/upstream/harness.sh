# bench/upstream/harness.sh — shared setup for bench/proxy and bench/wake (sourced, not run).
#
# Gives a bench: a private Podman API service, its own `cove server` (temp data dir, a fresh
# instance label, 127.0.0.1:0), a login and an API token, workspaces running the bench
# upstream (bench/upstream, built on demand) on port 8080 via ~/.cove/on-start, and one
# cleanup on exit that removes everything it made (workspaces through `cove rm`, then a
# sweep of objects with its labels, nginx & co, the server, the Podman service, the temp dir).
#
#   ROOT=... ; source "$ROOT/bench/upstream/harness.sh"
#   harness_init                  # WORK, INSTANCE, COVE, DOCKER_HOST; cleanup trap
#   harness_server                # COVE_URL, COVE_ADDR (127.0.0.1:PORT), COVE_PORT, TOKEN, ADMIN_PASSWORD_FILE
#   harness_upstream_bin          # UPSTREAM_BIN (cargo build --release if missing)
#   harness_workspace NAME        # cove create NAME + the upstream in it (cove push), answering on :8080
#   install_upstream_podman C     # the upstream and on-start in a plain Podman container C
#   container_of NAME / ip_of NAME
#   harness_on_exit 'command'     # run at cleanup, before the workspaces are removed
#   app_host NAME [PORT]          # PORT--NAME--admin.localhost:COVE_PORT
#
# Env: IMAGE (default cove/base:latest), COVE_BIN, CONTAINERS_CONF.
# shellcheck shell=bash

IMAGE=${IMAGE:-cove/base:latest}
UPSTREAM_PORT=8080
HARNESS_EXIT_CMDS=()
HARNESS_WORKSPACES=()
SERVER=""
PODMAN_SVC=""
WORK=""

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { date +%s%3N; }

harness_on_exit() { HARNESS_EXIT_CMDS+=("$1"); }

harness_cleanup() {
  local rc=$? cmd name
  set +e
  trap - EXIT INT TERM
  for cmd in "${HARNESS_EXIT_CMDS[@]}"; do eval "$cmd" >/dev/null 2>&1; done
  if [[ -n $SERVER ]] && kill -0 "$SERVER" 2>/dev/null; then
    for name in "${HARNESS_WORKSPACES[@]}"; do timeout 90 "$COVE" rm "$name" --timeout 60 >/dev/null 2>&1; done
    kill "$SERVER" 2>/dev/null
    wait "$SERVER" 2>/dev/null
  fi
  if [[ -n ${INSTANCE:-} ]]; then
    podman ps -aq --filter "label=cove.instance=$INSTANCE" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    podman volume ls -q --filter "label=cove.instance=$INSTANCE" | xargs -r podman volume rm -f >/dev/null 2>&1
    podman ps -aq --filter "label=cove.bench=$INSTANCE" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
    podman volume ls -q --filter "label=cove.bench=$INSTANCE" | xargs -r podman volume rm -f >/dev/null 2>&1
  fi
  [[ -n $PODMAN_SVC ]] && kill "$PODMAN_SVC" 2>/dev/null
  if [[ -n $WORK ]]; then
    if ((rc != 0)) && [[ -s $WORK/server.log ]]; then
      log "last lines of the cove server log:"
      tail -n 15 "$WORK/server.log" >&2
    fi
    rm -rf "$WORK"
  fi
  exit "$rc"
}

harness_init() {
  [[ $(id -u) -eq 0 ]] || die "run as root (rootful podman, like the other benches)"
  command -v podman >/dev/null || die "podman is missing: scripts/install-deps"
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/scripts/podman/containers.conf}
  COVE=${COVE_BIN:-}
  if [[ -z $COVE ]]; then
    for c in "$ROOT/target/release/cove" "$ROOT/target/debug/cove"; do [[ -x $c ]] && COVE=$c && break; done
  fi
  [[ -x ${COVE:-} ]] || die "build cove first: cargo build --release -p cove-cli"
  podman image exists "$IMAGE" || die "image $IMAGE is missing: $COVE image bootstrap"
  WORK=$(mktemp -d /tmp/cove-bench.XXXXXX)
  INSTANCE="bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
  trap harness_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local sock="$WORK/podman.sock"
  podman system service --time=0 "unix://$sock" >"$WORK/podman-service.log" 2>&1 &
  PODMAN_SVC=$!
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || die "podman system service did not come up"
  export DOCKER_HOST="unix://$sock"
}

harness_server() {
  "$COVE" server --listen 127.0.0.1:0 --data-dir "$WORK/data" --instance "$INSTANCE" \
    --default-image "$IMAGE" >"$WORK/server.out" 2>"$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 200); do grep -q '^cove server listening on ' "$WORK/server.out" 2>/dev/null && break; sleep 0.1; done
  COVE_URL=$(sed -n 's/^cove server listening on //p' "$WORK/server.out")
  [[ -n $COVE_URL ]] || die "cove server did not start (see above)"
  COVE_ADDR=${COVE_URL#http://}
  COVE_ADDR=${COVE_ADDR%%/*}
  COVE_PORT=${COVE_ADDR##*:}
  ADMIN_PASSWORD_FILE="$WORK/data/initial-admin-password"
  export COVE_CONFIG_DIR="$WORK/config" COVE_URL
  "$COVE" login "$COVE_URL" --username admin --password-file "$ADMIN_PASSWORD_FILE" >/dev/null 2>&1 ||
    die "cove login failed"
  TOKEN=$("$COVE" tokens create bench 2>/dev/null)
  [[ -n $TOKEN ]] || die "cove tokens create printed no token"
}

harness_upstream_bin() {
  UPSTREAM_BIN="$ROOT/bench/upstream/target/release/cove-bench-upstream"
  if [[ ! -x $UPSTREAM_BIN || $ROOT/bench/upstream/src/main.rs -nt $UPSTREAM_BIN ]]; then
    log "building bench/upstream"
    cargo build --release --quiet --manifest-path "$ROOT/bench/upstream/Cargo.toml" >&2
  fi
}

container_of() {
  podman ps -aq --filter "label=cove.instance=$INSTANCE" --filter "label=cove.name=$1" | head -n 1
}
ip_of() {
  podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{"\n"}}{{end}}' "$1" | grep -m1 . || true
}
app_host() { printf '%s--%s--admin.localhost:%s' "${2:-$UPSTREAM_PORT}" "$1" "$COVE_PORT"; }

# wait_http URL [SECONDS]: until URL gives any HTTP response.
wait_http() {
  local deadline=$(($(now_ms) + ${2:-10} * 1000))
  until curl -s -o /dev/null --max-time 2 "$1"; do
    (($(now_ms) < deadline)) || return 1
    sleep 0.02
  done
}

# The on-start script the workspace runs on every start (Cove runs ~/.cove/on-start).
# shellcheck disable=SC2016  # $HOME is for the workspace's shell
ON_START='#!/bin/sh
nohup "$HOME/bench/cove-bench-upstream" 8080 >>"$HOME/.cove/upstream.log" 2>&1 </dev/null &'

# install_upstream NAME: put the binary into the workspace's home with `cove push` (owned
# by the workspace user), write ~/.cove/on-start (as uid 1000 through cove exec).
install_upstream() {
  local stage="$WORK/push-$1"
  mkdir -p "$stage" && cp "$UPSTREAM_BIN" "$stage/cove-bench-upstream"
  "$COVE" push "$1" "$stage" --to bench >/dev/null || die "cove push into $1 failed"
  "$COVE" exec "$1" -e ON_START="$ON_START" -- sh -c \
    'mkdir -p "$HOME/.cove" && printf "%s\n" "$ON_START" >"$HOME/.cove/on-start" && chmod 755 "$HOME/.cove/on-start" "$HOME/bench/cove-bench-upstream"' \
    || die "writing ~/.cove/on-start in $1 failed"
}

# install_upstream_podman CONTAINER: the same for a plain Podman container running as uid
# 1000 (podman cp gives the files the container user's ownership).
install_upstream_podman() {
  podman exec --user 1000:1000 "$1" mkdir -p /home/cove/bench
  podman cp "$UPSTREAM_BIN" "$1:/home/cove/bench/cove-bench-upstream" >/dev/null
  podman exec --user 1000:1000 -e ON_START="$ON_START" "$1" sh -c \
    'mkdir -p "$HOME/.cove" && printf "%s\n" "$ON_START" >"$HOME/.cove/on-start" && chmod 755 "$HOME/.cove/on-start" "$HOME/bench/cove-bench-upstream"'
}

harness_workspace() {
  local name=$1 c ip
  "$COVE" create "$name" --image "$IMAGE" >/dev/null 2>&1 || die "cove create $name failed"
  HARNESS_WORKSPACES+=("$name")
  c=$(container_of "$name")
  [[ -n $c ]] || die "no container for workspace $name"
  install_upstream "$name"
  # Start it now the way any user would (on-start runs on the next start).
  # shellcheck disable=SC2016  # $HOME is for the workspace's shell
  "$COVE" exec "$name" -- sh -c '"$HOME/.cove/on-start" </dev/null >/dev/null 2>&1' || die "starting the upstream in $name failed"
  ip=$(ip_of "$c")
  wait_http "http://$ip:$UPSTREAM_PORT/" 10 || die "the upstream in $name does not answer on $ip:$UPSTREAM_PORT"
}
