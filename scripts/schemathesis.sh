#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API with schemathesis (https://schemathesis.io).
#
# Starts ONE `raftjob server` (a single-node cluster) on loopback with free ports in a
# temporary directory, waits for /readyz, creates an app, two jobs, an instance and a
# read token so that reads have data, then runs `schemathesis run` against the node's own
# /openapi.json with the admin token. The node is stopped (by its PID) on exit, and
# the temporary directory removed. The exit status is non-zero when schemathesis found
# a failure, or the node could not start, crashed, stopped answering /readyz or logged
# a 5xx; 130 when interrupted.
#
# Normally run through `make schemathesis`, which builds the binary first. See
# docs/testing.md, "Schema-driven fuzzing (schemathesis)".
#
# Not fuzzed: /api/v1/debug/* (test hooks) and the membership routes
# (/api/v1/cluster/members*, /api/v1/cluster/transfer-leader), which change the
# cluster itself; tests/fuzz_api.rs covers the latter's request bodies.
#
# Environment:
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default: 50)
#   SCHEMATHESIS_MAX_TIME      seconds schemathesis may run (default: 900); at the limit it
#                              is stopped and the run fails (a hang guard)
#   SCHEMATHESIS_WORKERS       concurrent schemathesis workers (default: 1; with more,
#                              CPython < 3.12 can fail inside hypothesis with "AST
#                              constructor recursion depth mismatch", CPython gh-106905)
#   SCHEMATHESIS_MAX_RESPONSE_TIME  a response slower than this many seconds is a failure
#                              (default: 10; a request with no answer in 20 s is an error)
#   SCHEMATHESIS_CHECKS        checks to run (default: all; see the comment above `args`)
#   SCHEMATHESIS_EXCLUDE_CHECKS  checks left out (default: positive_data_acceptance,ignored_auth)
#   SCHEMATHESIS_SEED          random seed, for a reproducible run (default: random)
#   SCHEMATHESIS_ARGS          extra arguments for `schemathesis run`
#   SCHEMATHESIS_VERSION       pip requirement installed into the venv (default: schemathesis>=4,<5)
#   SCHEMATHESIS_OUT           reports and the node's log (default: target/schemathesis)
#   RAFTJOB_BIN                server binary (default: target/debug/raftjob)
#   READY_TIMEOUT              seconds to wait for /readyz (default: 60)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BIN=${RAFTJOB_BIN:-target/debug/raftjob}
VENV=$ROOT/target/schemathesis-venv
OUT=${SCHEMATHESIS_OUT:-target/schemathesis}
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-50}
MAX_TIME=${SCHEMATHESIS_MAX_TIME:-900}
WORKERS=${SCHEMATHESIS_WORKERS:-1}
REQUIREMENT=${SCHEMATHESIS_VERSION:-schemathesis>=4,<5}
MAX_RESPONSE_TIME=${SCHEMATHESIS_MAX_RESPONSE_TIME:-10}
READY_TIMEOUT=${READY_TIMEOUT:-60}
HOST=127.0.0.1

say() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

case "${1:-}" in
    "") ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (try --help)" ;;
esac

for v in MAX_EXAMPLES MAX_TIME WORKERS MAX_RESPONSE_TIME READY_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ -x "$BIN" ] || die "$BIN not found. Build it first: \`cargo build --bins\` (or \`make schemathesis\`)."
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)."
command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)."

# --- schemathesis in its own venv ------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating a Python venv in $VENV"
    python3 -m venv "$VENV" || die "could not create a venv (apt-get install python3-venv)"
fi
if [ ! -x "$VENV/bin/schemathesis" ]; then
    say "schemathesis is not installed in $VENV: installing '$REQUIREMENT' from PyPI with pip"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$REQUIREMENT" >&2 ||
        die "pip install '$REQUIREMENT' failed"
fi
ST_VERSION=$("$VENV/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -n1 || true)
case "$ST_VERSION" in
    4.*) ;;
    *) die "this script needs the schemathesis 4.x CLI; $VENV has '${ST_VERSION:-none}' (rm -rf $VENV to reinstall)" ;;
esac
say "using schemathesis $ST_VERSION"

# --- One node ---------------------------------------------------------------------------
# Free loopback ports chosen by the OS (bound to port 0, read back, released). Another
# process could take one before the node binds it; the node then fails to start and
# the script says so.
read -r API_PORT CLUSTER_PORT HTTP_PORT WS_PORT < <("$VENV/bin/python" - <<'PY'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
)

random_hex() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
ADMIN_TOKEN=$(random_hex)
CLUSTER_SECRET=$(random_hex)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/raftjob-schemathesis.XXXXXX")
LOG="$OUT/node.log"
: >"$LOG"
SERVER_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            say "node (PID $SERVER_PID) did not stop within 10 s; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stray RAFTJOB_* variables would override the flags' defaults (RAFTJOB_LOG is kept).
while IFS= read -r var; do
    case $var in
        RAFTJOB_LOG | RAFTJOB_BIN) ;;
        RAFTJOB_*) unset "$var" ;;
    esac
done < <(compgen -e)

# The secrets go in the environment, not on the command line (ps shows that).
NO_COLOR=1 RAFTJOB_LOG=${RAFTJOB_LOG:-info,openraft=warn} \
    RAFTJOB_ADMIN_TOKEN="$ADMIN_TOKEN" RAFTJOB_CLUSTER_SECRET="$CLUSTER_SECRET" "$BIN" server \
    --node-id 1 \
    --data-dir "$WORK/node1" \
    --api-addr "$HOST:$API_PORT" \
    --cluster-addr "$HOST:$CLUSTER_PORT" \
    --transport "http=$HOST:$HTTP_PORT,ws=$HOST:$WS_PORT" \
    --initial-members "1=$HOST:$CLUSTER_PORT" \
    --log-format text \
    </dev/null >"$LOG" 2>&1 &
SERVER_PID=$!
API="http://$HOST:$API_PORT"
say "started raftjob server (PID $SERVER_PID) with api $API; log in $LOG"

node_alive() {
    kill -0 "$SERVER_PID" 2>/dev/null
}

deadline=$((SECONDS + READY_TIMEOUT))
until [ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$API/readyz" 2>/dev/null)" = 200 ]; do
    if ! node_alive; then
        say "the node exited before it was ready; last lines of $LOG:"
        tail -n 30 "$LOG" >&2
        exit 2
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "the node was not ready within ${READY_TIMEOUT}s; last lines of $LOG:"
        tail -n 30 "$LOG" >&2
        exit 2
    fi
    sleep 0.2
done
say "node ready"

# --- Some data, so reads and writes on ids and names hit something -------------------
api() { # METHOD PATH [JSON]
    local body=()
    [ $# -ge 3 ] && body=(-H 'Content-Type: application/json' -d "$3")
    curl -sS --fail-with-body --max-time 15 -X "$1" "$API$2" \
        -H "Authorization: Bearer $ADMIN_TOKEN" "${body[@]}" ||
        die "setup request $1 $2 failed"
}
id_of() { grep -o '"id": *[0-9]*' | head -n1 | grep -o '[0-9]*$'; }
api POST /api/v1/apps '{"name":"demo"}' >/dev/null
JOB1=$(api POST /api/v1/jobs '{"app":"demo","name":"hello","schedule":{"type":"api"},"processor":{"type":"shell","command":"echo hello"}}' | id_of)
JOB2=$(api POST /api/v1/jobs '{"app":"demo","name":"tick","schedule":{"type":"cron","expr":"0 0 * * * *","timezone":"UTC"},"processor":{"type":"shell","command":"date"}}' | id_of)
[ -n "$JOB1" ] && [ -n "$JOB2" ] || die "could not read the ids of the jobs just created"
api POST "/api/v1/jobs/$JOB1/run" >/dev/null
api POST /api/v1/tokens '{"name":"ci","app":"demo","role":"read"}' >/dev/null
say "created app demo, jobs $JOB1 and $JOB2, an instance of job $JOB1 and a read token"

# --- The spec --------------------------------------------------------------------------------
# The node's own document, kept in $OUT. One known defect is patched in the copy that is
# fuzzed, loudly: the query parameters of the list and read routes (`consistency`,
# `limit`, `job_id`, `status`, `app`, `after`, `count`) are declared `in: path` (their
# `utoipa::IntoParams` structs lack `#[into_params(parameter_in = Query)]`), so
# schemathesis would put them into a path that has no placeholder for them, i.e. never
# send them. The copy declares every `in: path` parameter that the path does not name
# as `in: query` (optional, and without null, when its schema admits null as an
# `Option` field's does), so the query strings are fuzzed too.
curl -sS --fail --max-time 15 "$API/openapi.json" -o "$OUT/openapi.json" || die "could not fetch $API/openapi.json"
"$VENV/bin/python" - "$OUT/openapi.json" "$OUT/openapi.fuzz.json" <<'PY' >&2
import json, sys
spec = json.load(open(sys.argv[1]))
moved = []
for path, item in spec.get("paths", {}).items():
    for method, op in item.items():
        if not isinstance(op, dict):
            continue
        for param in op.get("parameters", []):
            if param.get("in") == "path" and "{%s}" % param["name"] not in path:
                param["in"] = "query"
                # A path parameter is always required; these are `Option`s, whose schema
                # admits null: optional, and without null (a query string has no null).
                schema = param.get("schema", {})
                types = schema.get("type")
                branches = schema.get("oneOf", [])
                nullable = (isinstance(types, list) and "null" in types) or any(
                    b.get("type") == "null" for b in branches)
                param["required"] = not nullable
                if isinstance(types, list) and "null" in types:
                    rest = [t for t in types if t != "null"]
                    schema["type"] = rest[0] if len(rest) == 1 else rest
                rest = [b for b in branches if b.get("type") != "null"]
                if branches and len(rest) == 1:
                    del schema["oneOf"]
                    schema.update(rest[0])
                moved.append(f"{method.upper()} {path} ?{param['name']}")
json.dump(spec, open(sys.argv[2], "w"), indent=1)
if moved:
    print(f"schemathesis.sh: WARNING: /openapi.json declares {len(moved)} query parameters as path "
          "parameters; fuzzing a copy that declares them in: query:")
    for m in moved:
        print(f"    {m}")
PY

# --- schemathesis ------------------------------------------------------------------------
# Checks: every one schemathesis has, except
#   positive_data_acceptance: it expects any schema-valid request to succeed, but the
#     API rightly refuses many schema-valid ones: a name outside [A-Za-z0-9._-]{1,64},
#     a cron expression that does not parse or never fires again, an unknown time zone,
#     an Idempotency-Key outside 1-255 visible ASCII or already used with another body
#     (422), a job or app that does not exist, a transition an instance's state forbids
#     (409). Those rules are documented (docs/api.md, docs/security.md) and covered by
#     tests/fuzz_api.rs; JSON Schema cannot say them all.
#   ignored_auth: it re-sends requests without the token. After 20 failed token checks
#     in 10 s the api port answers every request from that IP with 429
#     too_many_failures (docs/security.md), so the rest of the run would test nothing
#     but the rate limit. Authentication is tested by tests/security.rs.
# For the same reason security parameters are not generated (no request without the
# admin token). On one node there are no elections, so not_a_server_error keeps 503
# (no_leader, outcome_unknown) as a failure: here it would be one.
# --continue-on-failure: without it an operation stops at its first failure, and an
# undocumented status or content type (see docs/testing.md) ends nearly every
# operation after a few requests, before its examples reach the handlers.
args=(
    run "$OUT/openapi.fuzz.json"
    --url "$API"
    --header "Authorization: Bearer $ADMIN_TOKEN"
    --checks "${SCHEMATHESIS_CHECKS:-all}"
    --exclude-checks "${SCHEMATHESIS_EXCLUDE_CHECKS:-positive_data_acceptance,ignored_auth}"
    --generation-with-security-parameters false
    --max-examples "$MAX_EXAMPLES"
    --continue-on-failure
    --workers "$WORKERS"
    --request-timeout 20
    --max-response-time "$MAX_RESPONSE_TIME"
    --exclude-path-regex '^/api/v1/(debug/|cluster/members|cluster/transfer-leader)'
    --report junit,ndjson
    --report-dir .
    --no-color
)
[ -n "${SCHEMATHESIS_SEED:-}" ] && args+=(--seed "$SCHEMATHESIS_SEED")
# shellcheck disable=SC2206
[ -n "${SCHEMATHESIS_ARGS:-}" ] && args+=($SCHEMATHESIS_ARGS)

say "running: schemathesis ${args[*]/$ADMIN_TOKEN/***}"
started=$SECONDS
rc=0
# The time bound: SIGINT at MAX_TIME (schemathesis stops and prints its summary),
# SIGKILL 30 s later. --foreground keeps schemathesis in this process group, so Ctrl-C
# reaches it (and the node) too.
# It runs in $OUT: its example database (.hypothesis/, replayed by the next run) and its
# failure cache (.schemathesis/) go to the working directory, not the repository.
(cd "$OUT" && exec timeout --foreground --signal=INT --kill-after=30 "$MAX_TIME" "$VENV/bin/schemathesis" "${args[@]}") || rc=$?
say "schemathesis finished in $((SECONDS - started)) s with status $rc; reports in $OUT/"
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    say "schemathesis did not finish within SCHEMATHESIS_MAX_TIME=${MAX_TIME}s (stopped);" \
        "a hang, or raise SCHEMATHESIS_MAX_TIME / lower SCHEMATHESIS_MAX_EXAMPLES"
    rc=1
fi

if ! node_alive; then
    node_rc=0
    wait "$SERVER_PID" 2>/dev/null || node_rc=$?
    SERVER_PID=""
    if [ "$node_rc" -eq 0 ] && grep -q 'Server stopped' "$LOG"; then
        # A clean shutdown: the node got SIGINT or SIGTERM from outside (Ctrl-C reaches
        # the whole process group, and schemathesis exits as if it had finished).
        say "interrupted: the node was stopped from outside"
        exit 130
    fi
    say "the node exited during the run with status $node_rc (a crash); last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    rc=1
elif [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$API/readyz" 2>/dev/null)" != 200 ]; then
    say "the node does not answer /readyz with 200 after the run (a hang?); last lines of $LOG:"
    tail -n 40 "$LOG" >&2
    rc=1
fi
if grep -q 'Request failed' "$LOG"; then
    say "the node logged 5xx errors (\"Request failed.\"):"
    grep 'Request failed' "$LOG" | head -n 20 >&2
    rc=1
fi
exit "$rc"
