#!/usr/bin/env bash
# End to end with PHP: a session page served by php-fpm behind nginx, driven by wrk, once with
# each session handler: files, redis (phpredis, locking on), memcached (php-memcached, locking
# on), cluster (scd's module; write-through and delayed-write). For each: requests/s and p99 with
# many sessions and with one hot session, failed requests (a lock or a write that failed: the
# page answers 503), and lost updates on the hot session (successful requests whose increment is
# missing from the final count).
#
# Usage:  bench/php-e2e.sh [--quick] [--out DIR]
#   --out defaults to target/bench-results/php-e2e.
#   env:  DURATION_S (10), CONNECTIONS (16), WORKERS (4 php-fpm workers), SESSIONS (1000),
#         HANDLERS ("files redis memcached cluster cluster-dw"), SIZE (session padding, 4000 B)
# Needs root (or sudo) once to install nginx, php-fpm, php-redis, php-memcached, wrk, redis-server
# and memcached from Debian; builds scd and cluster.so (cargo, release). Everything listens on
# 127.0.0.1 or Unix sockets in a temp dir, and everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
OUT=target/bench-results/php-e2e
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  DURATION_S=${DURATION_S:-2}; SESSIONS=${SESSIONS:-50}
fi
DURATION_S=${DURATION_S:-10}
CONNECTIONS=${CONNECTIONS:-16}
WORKERS=${WORKERS:-4}
SESSIONS=${SESSIONS:-1000}
SIZE=${SIZE:-4000}
HANDLERS=${HANDLERS:-files redis memcached cluster cluster-dw}

# --- what it needs ------------------------------------------------------------------------
need=()
for p in nginx php8.2-fpm php-redis php-memcached wrk redis-server memcached curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "building scd and cluster.so (release) ..."
cargo build --release -q -p scd -p scd-php
SCD=$TARGET/release/scd
CLUSTER_SO=$TARGET/release/libcluster.so
[ -x "$SCD" ] || { echo "no $SCD" >&2; exit 1; }
[ -f "$CLUSTER_SO" ] || { echo "no $CLUSTER_SO" >&2; exit 1; }

# --- a private world in a temp dir ---------------------------------------------------------
W=$(mktemp -d /tmp/scd-php-e2e.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for DESCRIPTION COMMAND...: poll up to 10 s
  local what=$1; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "$what did not come up" >&2; return 1
}

mkdir -p "$W/www" "$W/tmp" "$OUT"
# The page: one PHP request of an application that keeps a counter (and some state) in the
# session. A failed session_start() (lock not had) or session_write_close() (write refused or
# lost) answers 503, so wrk counts it.
cat > "$W/www/index.php" <<PHP
<?php
if (!@session_start()) { http_response_code(503); echo "session_start failed\n"; exit; }
\$_SESSION['n'] = (\$_SESSION['n'] ?? 0) + 1;
if (!isset(\$_SESSION['state'])) { \$_SESSION['state'] = str_repeat('s', $SIZE); }
\$n = \$_SESSION['n'];
if (!@session_write_close()) { http_response_code(503); echo "session write failed\n"; exit; }
// Hot-session runs count every acknowledged write here, whether or not wrk reads the reply.
if (isset(\$_GET['count'])) { file_put_contents('$W/acked', 'x', FILE_APPEND | LOCK_EX); }
echo \$n, "\n";
PHP

WEB_PORT=$(free_port)
cat > "$W/nginx.conf" <<NGINX
daemon off;
master_process on;
worker_processes 1;
user root;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W/tmp/body;
  fastcgi_temp_path $W/tmp/fastcgi;
  proxy_temp_path $W/tmp/proxy;
  uwsgi_temp_path $W/tmp/uwsgi;
  scgi_temp_path $W/tmp/scgi;
  server {
    listen 127.0.0.1:$WEB_PORT;
    root $W/www;
    location / {
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME $W/www/index.php;
      # One FastCGI connection per request: a kept-alive one would pin a php-fpm worker.
      fastcgi_pass unix:$W/fpm.sock;
    }
  }
}
NGINX
nginx -c "$W/nginx.conf" -p "$W" 2>"$W/nginx.out" &
PIDS+=($!)

# The stores, each started once with stated settings.
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$W" \
  --daemonize no --logfile "$W/redis.log" &
PIDS+=($!)
MEMC_PORT=$(free_port)
memc_user=(); [ "$(id -u)" -eq 0 ] && memc_user=(-u root)
memcached -t 2 -m 1024 -l 127.0.0.1 -p "$MEMC_PORT" -U 0 "${memc_user[@]}" 2>"$W/memcached.log" &
PIDS+=($!)
scd_start() { # scd_start NAME MODEL
  "$SCD" run --data-dir "$W/$1-data" --unix-socket "$W/$1.sock" --storage-model "$2" \
    --metrics-listen "" --log-level warn 2>"$W/$1.log" &
  PIDS+=($!)
  wait_for "scd ($2)" test -S "$W/$1.sock"
}
scd_start scd write-through
scd_start scd-dw delayed-write
wait_for redis redis-cli -p "$REDIS_PORT" ping
wait_for memcached bash -c "exec 3<>/dev/tcp/127.0.0.1/$MEMC_PORT"

WRK_LUA=$W/sessions.lua
cat > "$WRK_LUA" <<'LUA'
-- Each request carries a session cookie picked at random from IDS_FILE.
local ids = {}
init = function(args)
  for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end
request = function()
  local id = ids[math.random(#ids)]
  return wrk.format("GET", os.getenv("WRK_PATH") or "/", { Cookie = "PHPSESSID=" .. id })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d non2xx=%d sockerr=%d p50_ms=%.2f p99_ms=%.2f seconds=%.3f\n",
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.duration / 1e6))
end
LUA

fpm_start() { # fpm_start HANDLER: php-fpm with one pool configured for HANDLER
  local h=$1 extra=""
  case "$h" in
    files) extra="php_value[session.save_handler] = files
php_value[session.save_path] = $W/files-sessions" ; mkdir -p "$W/files-sessions" ;;
    redis) extra="php_value[session.save_handler] = redis
php_value[session.save_path] = tcp://127.0.0.1:$REDIS_PORT
php_value[redis.session.locking_enabled] = 1" ;;
    memcached) extra="php_value[session.save_handler] = memcached
php_value[session.save_path] = 127.0.0.1:$MEMC_PORT
php_value[memcached.sess_locking] = 1" ;;
    cluster) extra="php_admin_value[extension] = $CLUSTER_SO
php_value[session.save_handler] = cluster
php_value[session.save_path] = unix:$W/scd.sock" ;;
    cluster-dw) extra="php_admin_value[extension] = $CLUSTER_SO
php_value[session.save_handler] = cluster
php_value[session.save_path] = unix:$W/scd-dw.sock" ;;
  esac
  cat > "$W/fpm.conf" <<FPM
[global]
pid = $W/fpm.pid
error_log = $W/fpm-$h.log
daemonize = no
[www]
user = root
group = root
listen = $W/fpm.sock
listen.mode = 0666
pm = static
pm.max_children = $WORKERS
pm.max_requests = 0
catch_workers_output = yes
php_admin_value[error_log] = $W/php-$h.log
php_admin_flag[log_errors] = on
php_value[session.use_strict_mode] = 1
php_value[session.gc_probability] = 0
$extra
FPM
  rm -f "$W/fpm.sock"
  php-fpm8.2 -R -F -y "$W/fpm.conf" 2>>"$W/fpm-$h.out" &
  FPM_PID=$!
  PIDS+=("$FPM_PID")
  wait_for php-fpm test -S "$W/fpm.sock"
}
fpm_stop() { kill "$FPM_PID" 2>/dev/null || true; wait "$FPM_PID" 2>/dev/null || true; }

# new_sessions N FILE: N fresh sessions made through the page itself (so every handler makes its
# own IDs: cluster IDs come from scd), one cookie per line.
new_sessions() {
  : > "$2"
  for _ in $(seq 1 "$1"); do
    curl -s -o /dev/null -D - "http://127.0.0.1:$WEB_PORT/" |
      sed -n 's/^[Ss]et-[Cc]ookie: PHPSESSID=\([^;]*\).*/\1/p' >> "$2"
  done
  [ "$(wc -l < "$2")" -eq "$1" ] || { echo "could not make $1 sessions" >&2; return 1; }
}
counter() { curl -s -H "Cookie: PHPSESSID=$1" "http://127.0.0.1:$WEB_PORT/" | tr -d '\n'; }
run_wrk() { # run_wrk IDS_FILE [PATH] -> the RESULT line
  IDS_FILE=$1 WRK_PATH=${2:-/} wrk -t2 -c"$CONNECTIONS" -d"${DURATION_S}s" -s "$WRK_LUA" "http://127.0.0.1:$WEB_PORT/" |
    grep '^RESULT'
}
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "php-fpm $WORKERS workers, wrk $CONNECTIONS connections, ${DURATION_S} s per run, $SESSIONS sessions (many) / 1 (hot), ~${SIZE} B session"
JSON="$OUT/php-e2e.json"
echo "[" > "$JSON"
first=1
printf '\n%-11s %12s %10s %8s | %12s %10s %8s %6s\n' handler "many req/s" "p99 ms" failed "hot req/s" "p99 ms" failed lost
for h in $HANDLERS; do
  fpm_start "$h"
  new_sessions "$SESSIONS" "$W/many.ids"
  many=$(run_wrk "$W/many.ids")
  new_sessions 1 "$W/hot.ids"
  hot_id=$(cat "$W/hot.ids")
  before=$(counter "$hot_id")
  : > "$W/acked"
  hot=$(run_wrk "$W/hot.ids" "/?count=1")
  sleep 1 # requests still in flight when wrk stopped finish (and count) on the server
  acked=$(stat -c %s "$W/acked")
  after=$(counter "$hot_id")
  fpm_stop
  m_req=$(field requests "$many"); m_bad=$(field non2xx "$many"); m_s=$(field seconds "$many")
  h_req=$(field requests "$hot"); h_bad=$(field non2xx "$hot"); h_s=$(field seconds "$hot")
  # Every acknowledged hot request added 1; the probe request after the run added 1 more.
  lost=$((acked - (after - before - 1)))
  m_rps=$(awk -v r="$m_req" -v s="$m_s" 'BEGIN{printf "%.0f", r/s}')
  h_rps=$(awk -v r="$h_req" -v s="$h_s" 'BEGIN{printf "%.0f", r/s}')
  printf '%-11s %12s %10s %8s | %12s %10s %8s %6s\n' "$h" "$m_rps" "$(field p99_ms "$many")" "$m_bad" \
    "$h_rps" "$(field p99_ms "$hot")" "$h_bad" "$lost"
  [ $first = 1 ] || echo "," >> "$JSON"
  first=0
  cat >> "$JSON" <<J
  {"handler": "$h", "many": {"requests_per_s": $m_rps, "p50_ms": $(field p50_ms "$many"), "p99_ms": $(field p99_ms "$many"), "failed": $m_bad, "socket_errors": $(field sockerr "$many")},
   "hot": {"requests_per_s": $h_rps, "p50_ms": $(field p50_ms "$hot"), "p99_ms": $(field p99_ms "$hot"), "failed": $h_bad, "socket_errors": $(field sockerr "$hot"), "lost_updates": $lost}}
J
done
echo "]" >> "$JSON"
echo
echo "failed = requests answered 503 (session_start or session_write_close failed: no lock, or the write refused)"
echo "lost = acknowledged writes on the hot session whose increment is not in the final count"
echo "results: $JSON"
