#!/bin/sh
# Run once by Patroni on the first primary, after initdb: Natter's role and database
# (what POSTGRES_USER/POSTGRES_DB do in the single-Postgres stack). $1 is a superuser
# connection string.
set -eu
psql -v ON_ERROR_STOP=1 -v password="$NATTER_DB_PASSWORD" "$1" <<'SQL'
CREATE ROLE natter LOGIN PASSWORD :'password';
CREATE DATABASE natter OWNER natter;
SQL
