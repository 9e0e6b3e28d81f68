#!/usr/bin/env bash
# Starts a local three-node raftjob cluster on loopback, waits until every node is
# ready, prints how to use it, and stops it on Ctrl-C.
#
#   node i (1..3)   api 127.0.0.1:770i   cluster 127.0.0.1:780i
#                   transport http 127.0.0.1:1001i   ws 127.0.0.1:1008(5+i)
#
# State lives in .dev-cluster/ (data dirs, logs, generated configs and secrets) and
# survives restarts: the cluster comes back with its apps and jobs. `make clean-dev`
# removes it. Normally run through `make dev`, which builds the binary first.
#
# Stop it with Ctrl-C, or SIGTERM to this script. (A script started in the background
# by a non-interactive shell ignores SIGINT; use SIGTERM or --stop there.)
#
# Options:
#   --stop   stop a dev cluster left running by an earlier run that did not clean up
#            (only the PIDs recorded in .dev-cluster/node*.pid, if they still run raftjob)
#
# Environment:
#   RAFTJOB_BIN    binary to run (default: target/debug/raftjob)
#   RAFTJOB_LOG    log filter for the nodes (default: info,openraft=warn)
#   READY_TIMEOUT  seconds to wait for every node to become ready (default: 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BIN=${RAFTJOB_BIN:-target/debug/raftjob}
STATE=.dev-cluster
READY_TIMEOUT=${READY_TIMEOUT:-60}
NODES=(1 2 3)
HOST=127.0.0.1

api_port()     { echo $((7700 + $1)); }
cluster_port() { echo $((7800 + $1)); }
http_port()    { echo $((10010 + $1)); }
ws_port()      { echo $((10085 + $1)); }

die() { printf 'dev-cluster: %s\n' "$*" >&2; exit 1; }

# The recorded PID of node $1, if that process still runs with this node's config.
recorded_pid() {
    local pidfile="$STATE/node$1.pid" pid
    [ -f "$pidfile" ] || return 1
    pid=$(cat "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$STATE/node$1.toml" || return 1
    echo "$pid"
}

case "${1:-}" in
    "") ;;
    --stop)
        pids=()
        for i in "${NODES[@]}"; do
            pid=$(recorded_pid "$i") && pids+=("$pid")
        done
        if [ "${#pids[@]}" -eq 0 ]; then
            echo "dev-cluster: no dev cluster node is running."
            rm -f "$STATE"/node*.pid
            exit 0
        fi
        echo "Stopping PIDs ${pids[*]}..."
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            alive=0
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ "$alive" -eq 0 ] && break
            sleep 0.2
        done
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; done
        rm -f "$STATE"/node*.pid
        echo "stopped"
        exit 0
        ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
esac

# --- Preconditions -------------------------------------------------------------------
if [ ! -x "$BIN" ]; then
    die "$BIN not found. Build it first: \`make dev\` (or \`cargo build --bin raftjob\`)."
fi
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)."

# A port is busy if something listens on it (any local address).
port_busy() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null
    fi
}

busy=()
for i in "${NODES[@]}"; do
    for spec in "api:$(api_port "$i")" "cluster:$(cluster_port "$i")" \
                "transport http:$(http_port "$i")" "transport ws:$(ws_port "$i")"; do
        port=${spec##*:}
        if port_busy "$port"; then
            busy+=("port $port (node $i ${spec%:*}) is already in use")
        fi
    done
done
if [ "${#busy[@]}" -gt 0 ]; then
    printf 'dev-cluster: cannot start:\n' >&2
    printf '  %s\n' "${busy[@]}" >&2
    left=()
    for i in "${NODES[@]}"; do
        pid=$(recorded_pid "$i") && left+=("node $i = PID $pid")
    done
    if [ "${#left[@]}" -gt 0 ]; then
        printf '  A dev cluster from an earlier run is still running (%s).\n' "$(IFS=,; echo "${left[*]}" | sed 's/,/, /g')" >&2
        printf '  Stop it with: scripts/dev-cluster.sh --stop\n' >&2
    else
        printf '  Find the owner with: ss -ltnp | grep -E ":(77|78|100)[0-9]{2}\\b"\n' >&2
    fi
    exit 1
fi

# --- State, secrets, configs ---------------------------------------------------------
mkdir -p "$STATE"
chmod 700 "$STATE"

random_hex() {
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -hex 32
    else
        od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
    fi
}

if [ ! -s "$STATE/secrets.env" ]; then
    (
        umask 077
        {
            echo "# Generated once by scripts/dev-cluster.sh; reused on later runs."
            echo "# Delete it (or run \`make clean-dev\`) to make new ones."
            echo "ADMIN_TOKEN=$(random_hex)"
            echo "CLUSTER_SECRET=$(random_hex)"
        } >"$STATE/secrets.env"
    )
fi
# shellcheck disable=SC1091
. "$STATE/secrets.env"
[ "${#ADMIN_TOKEN}" -ge 16 ] && [ "${#CLUSTER_SECRET}" -ge 16 ] ||
    die "$STATE/secrets.env holds no valid ADMIN_TOKEN/CLUSTER_SECRET; delete it and run again."

for i in "${NODES[@]}"; do
    (
        umask 077
        cat >"$STATE/node$i.toml" <<TOML
# Generated by scripts/dev-cluster.sh on every run (edits are overwritten).
# Run this node by hand with: $BIN server --config $STATE/node$i.toml
# The commented reference for every key is in cluster/node1.toml.
node_id = $i
data_dir = "$STATE/node$i"
api_addr = "$HOST:$(api_port "$i")"
cluster_addr = "$HOST:$(cluster_port "$i")"
cluster_secret = "$CLUSTER_SECRET"
admin_token = "$ADMIN_TOKEN"
log_format = "text"

[transport]
http = "$HOST:$(http_port "$i")"
ws = "$HOST:$(ws_port "$i")"

[initial_members]
$(for j in "${NODES[@]}"; do echo "$j = \"$HOST:$(cluster_port "$j")\""; done)
TOML
    )
    mkdir -p "$STATE/node$i"
done

# Flags > env > file: stray RAFTJOB_* variables in this shell would override the
# generated configs, so the nodes run without them (RAFTJOB_LOG is kept).
stray=()
while IFS= read -r var; do
    case $var in
        RAFTJOB_LOG | RAFTJOB_BIN) ;;
        RAFTJOB_*) stray+=("$var"); unset "$var" ;;
    esac
done < <(compgen -e)
if [ "${#stray[@]}" -gt 0 ]; then
    echo "dev-cluster: ignoring ${stray[*]} from your environment (the configs in $STATE/ apply)."
fi

# --- Start, stop -----------------------------------------------------------------------
PIDS=()          # PIDs of the nodes this script started, index = node - 1
declare -A DEAD=()  # nodes already reported as exited

stop_cluster() {
    local rc=$?
    trap - INT TERM EXIT
    local alive=() pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    if [ "${#alive[@]}" -gt 0 ]; then
        echo
        echo "Stopping the cluster (PIDs ${alive[*]})..."
        kill -TERM "${alive[@]}" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while [ "$SECONDS" -lt "$deadline" ]; do
            local still=()
            for pid in "${alive[@]}"; do
                kill -0 "$pid" 2>/dev/null && still+=("$pid")
            done
            [ "${#still[@]}" -eq 0 ] && break
            sleep 0.2
        done
        for pid in "${alive[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                echo "PID $pid did not stop within 10 s; sending SIGKILL."
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        wait "${alive[@]}" 2>/dev/null || true
    fi
    rm -f "$STATE"/node*.pid
    [ "${#PIDS[@]}" -gt 0 ] && echo "stopped"
    exit "$rc"
}
trap stop_cluster EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for i in "${NODES[@]}"; do
    log="$STATE/node$i.log"
    [ -f "$log" ] && mv -f "$log" "$log.prev"
    # NO_COLOR: the logs go to files, so no ANSI colour codes.
    NO_COLOR=1 "$BIN" server --config "$STATE/node$i.toml" </dev/null >"$log" 2>&1 &
    PIDS+=("$!")
    echo "$!" >"$STATE/node$i.pid"
done
echo "Started nodes 1, 2, 3 (PIDs ${PIDS[*]}); logs in $STATE/node{1,2,3}.log"

show_logs() {
    local i
    for i in "${NODES[@]}"; do
        echo "---- last lines of $STATE/node$i.log ----"
        tail -n 30 "$STATE/node$i.log" 2>/dev/null || true
    done
}

# --- Wait until every node is ready ----------------------------------------------------
printf 'Waiting for the nodes to form a cluster (up to %ss) ' "$READY_TIMEOUT"
deadline=$((SECONDS + READY_TIMEOUT))
ready=()
readyz_body=""
while :; do
    ready=()
    for i in "${NODES[@]}"; do
        pid=${PIDS[$((i - 1))]}
        if ! kill -0 "$pid" 2>/dev/null; then
            rc=0; wait "$pid" || rc=$?
            echo
            echo "dev-cluster: node $i (PID $pid) exited with status $rc before the cluster was ready." >&2
            show_logs >&2
            exit 1
        fi
        body=$(curl -s --max-time 2 -w '\n%{http_code}' "http://$HOST:$(api_port "$i")/readyz" 2>/dev/null || true)
        if [ "${body##*$'\n'}" = "200" ]; then
            ready+=("$i")
            readyz_body=${body%$'\n'*}
        fi
    done
    [ "${#ready[@]}" -eq "${#NODES[@]}" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo
        echo "dev-cluster: the cluster was not ready within ${READY_TIMEOUT}s (ready: ${ready[*]:-none})." >&2
        show_logs >&2
        exit 1
    fi
    printf '.'
    sleep 1
done
echo " ready."

# Pick a follower to write to and another node to read from, so the examples show that
# any node serves every request (writes and linearizable reads go through the leader).
leader=$(printf '%s' "$readyz_body" | grep -o '"leader_id": *[0-9]*' | grep -o '[0-9]*$' || true)
write_node=1
read_node=2
write_note=""
read_note=""
if [ -n "$leader" ]; then
    write_note=" (a follower: it forwards the write to the leader, node $leader)"
    read_note=" (a linearizable read: it sees the write above)"
    others=()
    for i in "${NODES[@]}"; do [ "$i" != "$leader" ] && others+=("$i"); done
    write_node=${others[0]}
    read_node=${others[1]:-$leader}
fi

# --- A worker for the demo app -------------------------------------------------------------
# The app is created once; its worker token is kept in $STATE/demo.token (shown once by
# the API). The worker uses the ws protocol: it dials the servers, no inbound port.
API1="http://$HOST:$(api_port 1)"
if [ ! -s "$STATE/demo.token" ]; then
    resp=$(curl -sS --max-time 15 -X POST "$API1/api/v1/apps" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' -H 'Idempotency-Key: dev-cluster-demo-app' -d '{"name":"demo"}' || true)
    token=$(printf '%s' "$resp" | grep -o '"worker_token":"[^"]*"' | cut -d'"' -f4 || true)
    if [ -z "$token" ]; then
        echo "dev-cluster: could not create the demo app: $resp" >&2
        exit 1
    fi
    printf '%s\n' "$token" >"$STATE/demo.token"
    chmod 600 "$STATE/demo.token"
fi
WORKER_TOKEN=$(cat "$STATE/demo.token")
WS_SERVERS="$HOST:$(ws_port 1),$HOST:$(ws_port 2),$HOST:$(ws_port 3)"
RAFTJOB_WORKER_TOKEN="$WORKER_TOKEN" "$BIN" worker --app demo --servers "$WS_SERVERS" --protocol ws \
    --name dev-worker >"$STATE/worker.log" 2>&1 &
WORKER_PID=$!
PIDS+=("$WORKER_PID")
echo "Started a ws worker for app demo (PID $WORKER_PID); log in $STATE/worker.log"

# --- How to use it ---------------------------------------------------------------------
if command -v jq >/dev/null 2>&1; then
    pretty=" | jq ."
    take_id="jq -r .id"
    take_instance="jq -r .instance_id"
else
    pretty=""
    take_id="grep -o '\"id\":[0-9]*' | head -n1 | cut -d: -f2"
    take_instance="grep -o '\"instance_id\":[0-9]*' | cut -d: -f2"
fi
W="http://$HOST:$(api_port "$write_node")"
R="http://$HOST:$(api_port "$read_node")"

cat <<EOF

raftjob dev cluster is up${leader:+ (leader: node $leader)}.

  node  api               cluster           transport http     transport ws       log
EOF
for i in "${NODES[@]}"; do
    printf '  %-4s  %-16s  %-16s  %-17s  %-17s  %s\n' "$i" "$HOST:$(api_port "$i")" "$HOST:$(cluster_port "$i")" \
        "$HOST:$(http_port "$i")" "$HOST:$(ws_port "$i")" "$STATE/node$i.log"
done
cat <<EOF

  admin token:  $ADMIN_TOKEN     (also in $STATE/secrets.env)
  configs:      $STATE/node{1,2,3}.toml     data: $STATE/node{1,2,3}/
  console:      http://$HOST:$(api_port 1)/   (paste the admin token)

Try it (in another terminal; any node accepts every request):

  TOKEN=$ADMIN_TOKEN

  # The app "demo" exists and a worker (dev-worker, ws protocol) runs its jobs.
  # Create a job through node $write_node$write_note.
  # The Idempotency-Key makes a retry of the same request safe:
  JOB_ID=\$(curl -sS -X POST $W/api/v1/jobs \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -H 'Idempotency-Key: demo-hello-1' \\
    -d '{"app":"demo","name":"hello","schedule":{"type":"api"},"processor":{"type":"shell","command":"echo hello from \$RAFTJOB_INSTANCE_ID"}}' \\
    | $take_id); echo "job \$JOB_ID"

  # Run it now, then read the instance (status, attempts, result) from node $read_node$read_note:
  INSTANCE_ID=\$(curl -sS -X POST $W/api/v1/jobs/\$JOB_ID/run -H "Authorization: Bearer \$TOKEN" \\
    | $take_instance); echo "instance \$INSTANCE_ID"
  curl -sS $R/api/v1/instances/\$INSTANCE_ID -H "Authorization: Bearer \$TOKEN"$pretty
  curl -sS $R/api/v1/instances/\$INSTANCE_ID/logs -H "Authorization: Bearer \$TOKEN"$pretty

  # Workers, and the cluster (id, leader, term, members):
  curl -sS "$R/api/v1/workers?app=demo" -H "Authorization: Bearer \$TOKEN"$pretty
  curl -sS $W/api/v1/cluster -H "Authorization: Bearer \$TOKEN"$pretty

  # A job on a schedule: every 10 seconds (cron with seconds, in a time zone).
  # Its next fire times, and later its instances and any skipped fire times:
  CRON_ID=\$(curl -sS -X POST $W/api/v1/jobs \\
    -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' \\
    -d '{"app":"demo","name":"tick","schedule":{"type":"cron","expr":"*/10 * * * * *","timezone":"Europe/Berlin"},"processor":{"type":"shell","command":"date"}}' \\
    | $take_id); echo "job \$CRON_ID"
  curl -sS "$R/api/v1/jobs/\$CRON_ID/schedule?count=3" -H "Authorization: Bearer \$TOKEN"$pretty
  curl -sS "$R/api/v1/instances?job_id=\$CRON_ID&limit=3" -H "Authorization: Bearer \$TOKEN"$pretty
  curl -sS "$R/api/v1/jobs/\$CRON_ID/skipped" -H "Authorization: Bearer \$TOKEN"$pretty
  curl -sS -X POST $W/api/v1/jobs/\$CRON_ID/disable -H "Authorization: Bearer \$TOKEN"$pretty

Press Ctrl-C to stop the cluster.
EOF

# --- Wait; report a node that dies, keep the others until Ctrl-C ------------------------
while :; do
    running=0
    for i in "${NODES[@]}"; do
        pid=${PIDS[$((i - 1))]}
        [ -n "${DEAD[$i]:-}" ] && continue
        if kill -0 "$pid" 2>/dev/null; then
            running=$((running + 1))
        else
            rc=0; wait "$pid" 2>/dev/null || rc=$?
            DEAD[$i]=1
            rm -f "$STATE/node$i.pid"
            echo
            echo "dev-cluster: node $i (PID $pid) exited unexpectedly with status $rc. Last lines of $STATE/node$i.log:" >&2
            tail -n 20 "$STATE/node$i.log" >&2 || true
            echo "The other nodes keep running; press Ctrl-C to stop them." >&2
        fi
    done
    if [ "$running" -eq 0 ]; then
        echo "dev-cluster: every node has exited." >&2
        exit 1
    fi
    # Poll: `wait` returns at once when a trapped signal (Ctrl-C) arrives.
    sleep 2 &
    wait "$!" 2>/dev/null || true
done
