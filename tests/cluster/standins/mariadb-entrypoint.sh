#!/bin/sh
# Initialise an empty data directory from the official image's variables, then run mariadbd in the
# foreground on every interface. Writes only to /var/lib/mysql, /run/mysqld and /tmp (volumes in
# the chart), so the root filesystem can be read-only.
set -eu
DATADIR=/var/lib/mysql
INIT_SOCKET=/run/mysqld/init.sock

sql_string() { printf "'%s'" "$(printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/''/g")"; }
sql_name() { printf '`%s`' "$(printf '%s' "$1" | sed 's/`/``/g')"; }

if [ ! -d "${DATADIR}/mysql" ]; then
  : "${MARIADB_ROOT_PASSWORD:?is required to initialise the database}"
  echo "docker-entrypoint.sh: initialising ${DATADIR}"
  # --rpm: no host name lookup (a pod's name need not resolve), as the official image does it
  mariadb-install-db --datadir="${DATADIR}" --auth-root-authentication-method=normal \
    --skip-test-db --skip-name-resolve --rpm >/tmp/install-db.log 2>&1 \
    || { cat /tmp/install-db.log >&2; exit 1; }
  mariadbd --datadir="${DATADIR}" --skip-networking --socket="${INIT_SOCKET}" &
  pid=$!
  tries=0
  until mariadb-admin --socket="${INIT_SOCKET}" -uroot ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "${tries}" -lt 120 ] || { echo "docker-entrypoint.sh: mariadbd did not start" >&2; exit 1; }
    sleep 0.5
  done
  root=$(sql_string "${MARIADB_ROOT_PASSWORD}")
  {
    # the passwordless root accounts for the host's names (the official image drops them too)
    echo "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';"
    echo "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@''', @@hostname, '''');"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY ${root};"
    # install-db's password-less root@127.0.0.1 and root@::1 would win over root@'%' for TCP
    # logins from inside the pod (the readiness probe's): the official image drops them too
    echo "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY ${root};"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "${MARIADB_DATABASE:-}" ]; then
      echo "CREATE DATABASE IF NOT EXISTS $(sql_name "${MARIADB_DATABASE}");"
    fi
    if [ -n "${MARIADB_USER:-}" ]; then
      : "${MARIADB_PASSWORD:?is required with MARIADB_USER}"
      echo "CREATE USER $(sql_string "${MARIADB_USER}")@'%' IDENTIFIED BY $(sql_string "${MARIADB_PASSWORD}");"
      if [ -n "${MARIADB_DATABASE:-}" ]; then
        echo "GRANT ALL ON $(sql_name "${MARIADB_DATABASE}").* TO $(sql_string "${MARIADB_USER}")@'%';"
      fi
    fi
  } | mariadb --socket="${INIT_SOCKET}" -uroot
  mariadb-admin --socket="${INIT_SOCKET}" -uroot --password="${MARIADB_ROOT_PASSWORD}" shutdown
  wait "${pid}"
fi
exec mariadbd --datadir="${DATADIR}" --bind-address=0.0.0.0 --socket=/run/mysqld/mysqld.sock \
  --skip-name-resolve "$@"
