#!/usr/bin/env bash
# Records real database traffic into the pcapng captures next to this script (redis.pcapng,
# postgresql.pcapng, mysql.pcapng): real redis-server/redis-cli, postgres/psql/pgbench and
# mariadbd/mariadb exchanges on the loopback of a private network namespace (`unshare -n`, so the
# protocols' usual ports 6379, 5432 and 3306 never clash with a server of the host), captured by
# dumpcap. See README.md. Needs root and the Debian packages redis-server, postgresql,
# mariadb-server, mariadb-client and tshark (scripts/install-deps.sh installs them).
# Usage: sudo collector/testdata/db/capture.sh [OUTPUT_DIR]
set -euo pipefail
here=$(realpath "$(dirname "$0")")
out=$(realpath "${1:-$here}")
if [ "${CAPTURE_IN_NETNS:-}" != 1 ]; then
  exec env CAPTURE_IN_NETNS=1 unshare -n bash "$0" "$out"
fi
ip link set lo up
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Captures what `"$@"` sends on loopback port $2 into $1 (dumpcap started and stopped around it).
record() { # file port command...
  local file=$1 port=$2
  shift 2
  dumpcap -q -i lo -f "tcp port $port" -w "$work/cap.pcapng" 2>"$work/dumpcap.log" &
  local dc=$!
  # dumpcap has its filter in place once it says so.
  for _ in $(seq 100); do grep -q "File:" "$work/dumpcap.log" 2>/dev/null && break; sleep 0.1; done
  "$@"
  sleep 0.5
  kill -INT "$dc"
  wait "$dc" || true
  # Rewritten by editcap, dropping any decryption-secrets block (loopback TLS would bring none).
  editcap --discard-all-secrets "$work/cap.pcapng" "$file"
}

# --- Redis -----------------------------------------------------------------------------------
redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p 6379 PING >/dev/null 2>&1 && break; sleep 0.1; done
redis_session() {
  redis-cli -p 6379 SET user:42 secret-value
  redis-cli -p 6379 GET user:42
  redis-cli -p 6379 HGETALL nokey
  redis-cli -p 6379 LPUSH user:42 x || true
  # A pipeline in RESP (as clients send it): SET, INCR, GET and an unknown command, one write.
  resp() { printf '*%d\r\n' $#; for a in "$@"; do printf '$%d\r\n%s\r\n' ${#a} "$a"; done; }
  { resp SET a 1; resp INCR a; resp GET a; resp NOSUCHC; } | redis-cli -p 6379 --pipe || true
  redis-cli -3 -p 6379 HSET h f v
  redis-cli -3 -p 6379 HGETALL h
}
record "$out/redis.pcapng" 6379 redis_session >/dev/null

# --- PostgreSQL ------------------------------------------------------------------------------
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
mkdir "$work/pg"
chown postgres:postgres "$work/pg"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=trust >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -t 30 \
  -o "-p 5432 -c listen_addresses=127.0.0.1 -k $work/pg -c fsync=off" start >/dev/null
pg_session() {
  local psql=(psql -X -h 127.0.0.1 -p 5432 -U postgres -d postgres)
  "${psql[@]}" -c 'CREATE TABLE users (id int, email text)'
  "${psql[@]}" -c "INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'bob@example.com')"
  "${psql[@]}" -c "SELECT id FROM users WHERE email = 'ann@example.com'"
  "${psql[@]}" -c 'SELECT * FROM missing' || true
  printf '\\set id 1\nSELECT email FROM users WHERE id = :id;\nSELECT 1/0;\n' >"$work/pg/script.sql"
  "$pgbin/pgbench" -h 127.0.0.1 -p 5432 -U postgres -n -t 1 -M prepared -f "$work/pg/script.sql" postgres || true
}
record "$out/postgresql.pcapng" 5432 pg_session >/dev/null 2>&1
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null

# --- MySQL (MariaDB) -------------------------------------------------------------------------
mkdir "$work/my"
chown mysql:mysql "$work/my"
mariadb-install-db --user=mysql --datadir="$work/my/data" --auth-root-authentication-method=socket \
  --skip-test-db >/dev/null
mariadbd --no-defaults --user=mysql --datadir="$work/my/data" --socket="$work/my/sock" \
  --pid-file="$work/my/pid" --port=3306 --bind-address=127.0.0.1 --skip-name-resolve \
  --innodb-buffer-pool-size=16M >"$work/my/log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do mariadb --socket="$work/my/sock" -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
mariadb --socket="$work/my/sock" -e "CREATE DATABASE shop; CREATE USER 'app'@'%' IDENTIFIED BY 'app-pass'; GRANT ALL ON shop.* TO 'app'@'%'"
mysql_session() {
  local my=(mariadb --skip-ssl -h 127.0.0.1 -P 3306 -u app -papp-pass shop)
  "${my[@]}" -e 'CREATE TABLE users (id int, email text)'
  "${my[@]}" -e "INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'bob@example.com')"
  "${my[@]}" -e "SELECT id FROM users WHERE email = 'ann@example.com'"
  "${my[@]}" -e 'SELECT * FROM missing' || true
  python3 "$here/mysql_prepared.py" 127.0.0.1 3306 app app-pass shop \
    "SELECT email FROM users WHERE id = ?" 2 || true
}
record "$out/mysql.pcapng" 3306 mysql_session >/dev/null
ls -l "$out"/*.pcapng
