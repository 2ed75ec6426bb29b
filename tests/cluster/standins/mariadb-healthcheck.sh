#!/bin/sh
# The official image's healthcheck.sh, for the two checks the chart's readiness probe asks:
#   --connect             the server accepts TCP connections
#   --innodb_initialized  InnoDB is up (as root, with MARIADB_ROOT_PASSWORD from the environment)
# Any other argument is refused rather than passing unchecked.
set -eu
[ "$#" -gt 0 ] || { echo "usage: healthcheck.sh [--connect] [--innodb_initialized]" >&2; exit 2; }
for check in "$@"; do
  case "${check}" in
    --connect)
      mariadb-admin --protocol=tcp -h127.0.0.1 ping >/dev/null ;;
    --innodb_initialized)
      ready=$(mariadb --protocol=tcp -h127.0.0.1 -uroot --password="${MARIADB_ROOT_PASSWORD}" -sN \
        -e "SELECT 1 FROM information_schema.ENGINES WHERE ENGINE='InnoDB' AND SUPPORT IN ('YES','DEFAULT')")
      [ "${ready}" = 1 ] ;;
    *)
      echo "healthcheck.sh: unsupported check ${check}" >&2; exit 2 ;;
  esac
done
