#!/usr/bin/env bash
# `make airflow`: Airflow standalone (api-server, scheduler, dag-processor, triggerer) with this
# project's DAG and plugin, sized for a small machine, stopped cleanly with Ctrl-C.
# Exits non-zero, with the last lines of Airflow's log, when the UI does not answer in time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV_DIR:-$root/.venv}
# standalone starts each part by running plain `airflow`: the venv must be on the PATH of all of them,
# also from a shell that never activated it.
export PATH="$venv/bin:$PATH"
export AIRFLOW_HOME=${AIRFLOW_HOME:-$root/.airflow}
cores=$(nproc)
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-$(( cores < 4 ? 2 : cores / 2 ))}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-$AIRFLOW__CORE__PARALLELISM}
export CNN_PARALLEL_TASKS=${CNN_PARALLEL_TASKS:-$AIRFLOW__CORE__PARALLELISM}
export AIRFLOW__API__PORT=${AIRFLOW__API__PORT:-8080}
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
timeout=${AIRFLOW_START_TIMEOUT:-300}
url="http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT"
mkdir -p "$AIRFLOW_HOME"
log="$AIRFLOW_HOME/standalone.log"

if ! command -v airflow >/dev/null; then
  echo "No 'airflow' in $venv/bin: run 'make setup' first." >&2
  exit 1
fi
if curl -fs -m 5 "$url/api/v2/monitor/health" >/dev/null 2>&1; then
  echo "Something already answers on $url: stop it, or choose another port (AIRFLOW__API__PORT=8081 make airflow)." >&2
  exit 1
fi

airflow db migrate >/dev/null
airflow pools set "${CNN_TRAINING_POOL:-training}" "$AIRFLOW__CORE__PARALLELISM" "CNN training tasks" >/dev/null

# Run standalone in its own process group so Ctrl-C stops it and every part it started.
echo "Starting Airflow (log: $log) ..."
setsid airflow standalone >"$log" 2>&1 &
pid=$!
stop() {  # SIGTERM to every part, SIGKILL to what is left after 30 s
  trap - INT TERM; echo "Stopping Airflow..."; kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
}
trap 'stop; exit 0' INT TERM
fail() { echo "$1" >&2; echo "The last lines of $log:" >&2; tail -n 25 "$log" >&2; stop >/dev/null; exit 1; }

# Up means: the UI answers and reports the scheduler, dag-processor and triggerer healthy.
unhealthy() {  # prints the parts that are not healthy yet ("" when all are)
  curl -fs -m 5 "$url/api/v2/monitor/health" 2>/dev/null | python -c '
import json, sys
health = json.load(sys.stdin)
print(" ".join(p for p in ("scheduler", "dag_processor", "triggerer") if (health.get(p) or {}).get("status") != "healthy"))
' 2>/dev/null || echo "api-server"
}
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
deadline=$(( SECONDS + timeout ))
until [ -s "$passwords" ] && [ -z "$(unhealthy)" ]; do
  kill -0 "$pid" 2>/dev/null || fail "Airflow exited before its UI answered on $url."
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "Airflow did not start within $timeout s (AIRFLOW_START_TIMEOUT) on $url: not healthy: $(unhealthy)."
  sleep 2
done
echo
echo "Airflow is up: $url  (parallelism $AIRFLOW__CORE__PARALLELISM; log: $log)"
echo "Login: $(python -c 'import json, sys; print(", ".join(f"{u} / {p}" for u, p in json.load(open(sys.argv[1])).items()))' "$passwords")"
echo "Press Ctrl-C to stop."
wait "$pid" || fail "Airflow stopped."
