#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for tests (the metrics package's integration
# tests) and prints its DSN on stdout:
#
#   export CRF_PG_DSN="$(bash scripts/pg-test.sh)"
#   bash scripts/pg-test.sh stop
#
# The server listens only on 127.0.0.1:$PGTEST_PORT (default 55432) with
# trust authentication, keeps everything under $PGTEST_DIR (default
# /tmp/crfailoverd-pgtest) and serves a database named crfailoverd_test.
# It is idempotent: when the server already runs, it only prints the DSN.
# PostgreSQL is installed with apt only when no initdb is found (in PATH or
# /usr/lib/postgresql/*/bin). As root the server runs as the user postgres
# (created when missing); otherwise as the current user.
#
# Commands: start (default), stop, status, dsn. Progress goes to stderr.
set -euo pipefail

PGTEST_DIR=${PGTEST_DIR:-/tmp/crfailoverd-pgtest}
PGTEST_PORT=${PGTEST_PORT:-55432}
DB=crfailoverd_test
DATA=$PGTEST_DIR/data
LOG=$PGTEST_DIR/postgres.log
DSN="postgres://postgres@127.0.0.1:${PGTEST_PORT}/${DB}?sslmode=disable"
cmd=${1:-start}

say() { echo "pg-test: $*" >&2; }
die() {
	say "$*"
	exit 1
}

case $cmd in
start | stop | status | dsn) ;;
*) die "usage: $0 [start|stop|status|dsn]" ;;
esac
case $PGTEST_PORT in
'' | *[!0-9]*) die "PGTEST_PORT must be a port number, got '$PGTEST_PORT'" ;;
esac

if [ "$cmd" = dsn ]; then
	echo "$DSN"
	exit 0
fi

# bindir prints the directory holding initdb, pg_ctl and postgres, or fails.
bindir() {
	local p d
	if p=$(command -v initdb 2>/dev/null); then
		d=$(dirname "$(readlink -f "$p")")
		if [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
			echo "$d"
			return 0
		fi
	fi
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}

if ! BIN=$(bindir); then
	[ "$cmd" = start ] || die "no PostgreSQL installed"
	[ "$(id -u)" = 0 ] || die "no initdb found and not root: install postgresql"
	say "installing postgresql"
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
	BIN=$(bindir) || die "postgresql installed but no initdb found"
fi

# Client programs: next to the server's, else from PATH.
client() {
	if [ -x "$BIN/$1" ]; then
		echo "$BIN/$1"
	else
		command -v "$1" || die "no $1 found"
	fi
}
PSQL=$(client psql)

# The server runs as postgres when we are root (it refuses to run as root).
if [ "$(id -u)" = 0 ]; then
	RUNAS=postgres
	if ! id -u "$RUNAS" >/dev/null 2>&1; then
		say "creating user $RUNAS"
		useradd --system --user-group --no-create-home --home-dir "$PGTEST_DIR" --shell /bin/sh "$RUNAS"
	fi
else
	RUNAS=$(id -un)
fi

# as runs a command as the server's user.
# The lock's descriptor is closed for it: a server started here must not
# hold the lock after this script exits.
as() {
	if [ "$(id -un)" = "$RUNAS" ]; then
		"$@" 9>&-
	elif command -v runuser >/dev/null 2>&1; then
		runuser -u "$RUNAS" -- "$@" 9>&-
	else
		su -s /bin/sh "$RUNAS" -c "$(printf '%q ' "$@")" 9>&-
	fi
}

running() {
	[ -f "$DATA/PG_VERSION" ] && as "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

# Serialize concurrent invocations (parallel test runs).
mkdir -p "$(dirname "$PGTEST_DIR")"
if command -v flock >/dev/null 2>&1; then
	exec 9>"$PGTEST_DIR.lock"
	flock -w 120 9 || die "another pg-test.sh holds $PGTEST_DIR.lock"
fi

case $cmd in
stop)
	if running; then
		as "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2
	else
		say "not running"
	fi
	exit 0
	;;
status)
	if running; then
		say "running on 127.0.0.1:$PGTEST_PORT ($DATA)"
		echo "$DSN"
		exit 0
	fi
	say "not running"
	exit 3
	;;
esac

sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGTEST_PORT" -U postgres "$@"; }

if ! running; then
	mkdir -p "$PGTEST_DIR"
	chmod 0755 "$PGTEST_DIR"
	[ "$(id -u)" = 0 ] && chown "$RUNAS": "$PGTEST_DIR"
	if [ ! -f "$DATA/PG_VERSION" ]; then
		say "initializing $DATA"
		rm -rf "$DATA"
		as "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >"$PGTEST_DIR/initdb.log" 2>&1 ||
			die "initdb failed: $(tail -n 20 "$PGTEST_DIR/initdb.log")"
		as sh -c "cat >'$DATA/pg_hba.conf'" <<-'EOF'
			# crfailoverd test server: trust, local socket and loopback only.
			local all all               trust
			host  all all 127.0.0.1/32  trust
		EOF
	fi
	say "starting on 127.0.0.1:$PGTEST_PORT"
	# The settings are passed on every start so that PGTEST_PORT applies to
	# an existing data directory too. fsync off: the data is throwaway.
	opts="-c listen_addresses=127.0.0.1 -c port=$PGTEST_PORT -c unix_socket_directories=$PGTEST_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
	if ! as "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "$opts" -w -t 60 start >/dev/null 2>&1; then
		die "PostgreSQL did not start: $(tail -n 20 "$LOG" 2>/dev/null)"
	fi
fi

# Wait until it accepts connections on the loopback port.
for _ in $(seq 1 60); do
	if sql -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
		break
	fi
	sleep 0.5
done
sql -d postgres -tAc 'SELECT 1' >/dev/null 2>&1 ||
	die "PostgreSQL runs but does not answer on 127.0.0.1:$PGTEST_PORT: $(tail -n 20 "$LOG" 2>/dev/null)"

if [ "$(sql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
	say "creating database $DB"
	sql -d postgres -c "CREATE DATABASE $DB" >/dev/null
fi
echo "$DSN"
