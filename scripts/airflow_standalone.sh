#!/usr/bin/env bash
# `make airflow`: Airflow standalone (api-server, scheduler, dag-processor, triggerer) with this
# project's DAG and plugin, sized for a small machine, stopped cleanly with Ctrl-C.
set -euo pipefail
cores=$(nproc)
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-$(( cores < 4 ? 2 : cores / 2 ))}
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-$AIRFLOW__CORE__PARALLELISM}
export CNN_PARALLEL_TASKS=${CNN_PARALLEL_TASKS:-$AIRFLOW__CORE__PARALLELISM}
export AIRFLOW__API__PORT=${AIRFLOW__API__PORT:-8080}
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
airflow=.venv/bin/airflow

$airflow db migrate >/dev/null
$airflow pools set "${CNN_TRAINING_POOL:-training}" "$AIRFLOW__CORE__PARALLELISM" "CNN training tasks" >/dev/null

# Run standalone in its own process group so Ctrl-C stops it and every worker it started.
setsid "$airflow" standalone &
pid=$!
stop() { trap - INT TERM; echo "Stopping Airflow..."; kill -TERM -- "-$pid" 2>/dev/null || true
         wait "$pid" 2>/dev/null || true; kill -KILL -- "-$pid" 2>/dev/null || true; exit 0; }
trap stop INT TERM

passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
for _ in $(seq 120); do
  [ -s "$passwords" ] && curl -fs "http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT/api/v2/version" >/dev/null 2>&1 && break
  sleep 2
done
echo
echo "Airflow is up: http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT  (parallelism $AIRFLOW__CORE__PARALLELISM)"
echo "Login: $(cat "$passwords" 2>/dev/null || echo 'see the standalone output above')"
echo "Press Ctrl-C to stop."
wait "$pid"
