#!/usr/bin/env bash
# Restarts the servers of a raftjob cluster one at a time, waiting for each to be back
# and caught up before the next; the leader goes last, after handing its leadership to
# a caught-up follower (`raftjob cluster transfer-leader`). See docs/drills.md.
#
# Usage:
#   cluster/rolling-restart.sh --stop-cmd 'TEMPLATE' --start-cmd 'TEMPLATE' [options]
#   cluster/rolling-restart.sh --docker [--container-template 'raftjob-{node_id}'] [options]
#
# Templates run with `sh -c`; {node_id} and {api_addr} are filled in. The stop command
# should stop the node cleanly (SIGTERM) and may return before it has exited.
#
# Options:
#   --nodes 1,2,3      only these node ids (default: every voter)
#   --timeout SECONDS  per node, for stopping and for catching up (default 120)
#   --no-transfer      restart the leader without handing its leadership over first
#
# Environment (as for every raftjob CLI command): RAFTJOB_SERVER (every node's api
# address, comma separated), RAFTJOB_ADMIN_TOKEN. RAFTJOB_BIN: the raftjob binary
# (default: `raftjob` on PATH, else target/debug/raftjob). Needs jq.
set -euo pipefail

die() { printf 'rolling-restart: %s\n' "$*" >&2; exit 1; }
say() { printf 'rolling-restart: %s\n' "$*"; }

STOP_CMD="" START_CMD="" DOCKER=0 CONTAINER='raftjob-{node_id}' ONLY="" TIMEOUT=120 TRANSFER=1
while [ $# -gt 0 ]; do
    case "$1" in
        --stop-cmd) STOP_CMD=${2:?}; shift 2 ;;
        --start-cmd) START_CMD=${2:?}; shift 2 ;;
        --docker) DOCKER=1; shift ;;
        --container-template) CONTAINER=${2:?}; shift 2 ;;
        --nodes) ONLY=${2:?}; shift 2 ;;
        --timeout) TIMEOUT=${2:?}; shift 2 ;;
        --no-transfer) TRANSFER=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ "$DOCKER" = 1 ]; then
    STOP_CMD="docker stop $CONTAINER"
    START_CMD="docker start $CONTAINER"
fi
[ -n "$STOP_CMD" ] && [ -n "$START_CMD" ] || die "give --stop-cmd and --start-cmd, or --docker"
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"
[ -n "${RAFTJOB_SERVER:-}" ] || die "set RAFTJOB_SERVER to every node's api address, comma separated"

if [ -n "${RAFTJOB_BIN:-}" ]; then BIN=$RAFTJOB_BIN
elif command -v raftjob >/dev/null; then BIN=raftjob
else BIN="$(cd "$(dirname "$0")/.." && pwd)/target/debug/raftjob"; fi
[ -x "$BIN" ] || command -v "$BIN" >/dev/null || die "no raftjob binary at $BIN (set RAFTJOB_BIN)"

# The cluster as the leader sees it (its own view), or nothing if there is no leader.
status() {
    local out
    out=$("$BIN" cluster status --json 2>/dev/null) || true
    if jq -e '.leader_id != null and .leader_id == .node_id' <<<"$out" >/dev/null 2>&1; then
        printf '%s' "$out"
    fi
}

# Whether a node's api port answers /readyz (a member that knows the leader) or, with
# --alive, /healthz.
ready() { "$BIN" healthcheck --addr "$1" --ready --timeout-ms 1000 >/dev/null 2>&1; }
alive() { "$BIN" healthcheck --addr "$1" --timeout-ms 1000 >/dev/null 2>&1; }

fill() { local t=${1//\{node_id\}/$2}; printf '%s' "${t//\{api_addr\}/$3}"; }

# Waits until node $1 (api $2) answers with a leader known, and the leader reports it
# holding every entry (matched index = the leader's last log index).
wait_caught_up() {
    local id=$1 api=$2 deadline=$((SECONDS + TIMEOUT)) s
    while [ $SECONDS -lt $deadline ]; do
        if ready "$api"; then
            s=$(status)
            if [ -n "$s" ] && [ "$(jq -r --argjson id "$id" \
                '[.members[] | select(.id == $id) | .matched_index][0] == .last_log_index' \
                <<<"$s")" = true ]; then
                return 0
            fi
        fi
        sleep 0.2
    done
    return 1
}

# Waits until node $1's api port stops answering.
wait_down() {
    local api=$2 deadline=$((SECONDS + TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        alive "$api" || return 0
        sleep 0.2
    done
    return 1
}

S=$(status)
[ -n "$S" ] || die "no leader: run \`$BIN cluster status\` to see why"
LEADER=$(jq -r '.leader_id' <<<"$S")
VOTERS=$(jq -r '.members[] | select(.voter) | .id' <<<"$S")
if [ -n "$ONLY" ]; then
    VOTERS=$(for v in $VOTERS; do case ",$ONLY," in *",$v,"*) echo "$v" ;; esac; done)
fi
# Followers first, the leader last.
ORDER=""
for v in $VOTERS; do if [ "$v" != "$LEADER" ]; then ORDER="$ORDER $v"; fi; done
for v in $VOTERS; do if [ "$v" = "$LEADER" ]; then ORDER="$ORDER $v"; fi; done
[ -n "$ORDER" ] || die "no node to restart"
say "order: $(echo $ORDER) (leader $LEADER last)"

for id in $ORDER; do
    S=$(status)
    [ -n "$S" ] || die "no leader before restarting node $id; stopping here"
    api=$(jq -r --argjson id "$id" '.members[] | select(.id == $id) | .api_addr' <<<"$S")
    [ -n "$api" ] && [ "$api" != null ] || die "node $id has no published api address"
    # Everyone caught up before taking one away (a majority must stay complete).
    for other in $VOTERS; do
        oapi=$(jq -r --argjson id "$other" '.members[] | select(.id == $id) | .api_addr' <<<"$S")
        wait_caught_up "$other" "$oapi" || die "node $other is not caught up; not restarting node $id"
    done
    if [ "$TRANSFER" = 1 ] && [ "$(jq -r '.leader_id' <<<"$S")" = "$id" ]; then
        to=$(jq -r --argjson id "$id" '[.members[] | select(.voter and .id != $id)] | max_by(.matched_index // 0) | .id' <<<"$S")
        say "node $id leads: handing the leadership to node $to"
        "$BIN" cluster transfer-leader --to "$to" || die "the transfer to node $to failed; not restarting the leader"
    fi
    started=$SECONDS
    say "stopping node $id ($api)"
    sh -c "$(fill "$STOP_CMD" "$id" "$api")" || die "the stop command for node $id failed"
    wait_down "$id" "$api" || die "node $id still answers $TIMEOUT s after the stop command"
    say "starting node $id"
    sh -c "$(fill "$START_CMD" "$id" "$api")" || die "the start command for node $id failed"
    wait_caught_up "$id" "$api" || die "node $id did not catch up within $TIMEOUT s"
    say "node $id is back and caught up ($((SECONDS - started)) s)"
done
say "done: every node restarted; leader now $(status | jq -r '.leader_id')"
