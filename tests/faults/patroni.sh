# A highly available Postgres for the `postgres-failover` fault (sourced by
# tests/faults/run): one etcd and three Postgres 15 instances managed by Patroni, from
# Debian's `etcd-server` and `patroni` packages, on free loopback ports, with synchronous
# replication (Patroni's `synchronous_mode`: one synchronous standby, and only it may be
# promoted). Timings are short so a test sees a failover in seconds: the leader key
# lives 10 s (`ttl`), members check every second (`loop_wait`).
#
#   patroni_start DIR        starts etcd and the members; sets PATRONI_HOSTS
#   patroni_url DB           prints the multi-host URL of database DB (read-write)
#   patroni_leader           prints the index of the member that is primary now
#   patroni_kill I           SIGKILL of member I's Patroni and its Postgres (a dead host)
#   patroni_restart I        starts member I again (it rejoins as a replica)
#   patroni_stop             stops everything
#
# Needs: free_port, log and wait_port from the caller.

PATRONI_MEMBERS=3
PATRONI_PIDS=(); PATRONI_PG_PORTS=(); PATRONI_API_PORTS=()

ensure_patroni() {
    command -v patroni >/dev/null && command -v etcd >/dev/null && return 0
    log "installing patroni and etcd-server from Debian"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq patroni etcd-server >/dev/null
}

patroni_start() {
    PATRONI_DIR="$1"
    ensure_patroni
    mkdir -p "$PATRONI_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$PATRONI_DIR"
    local etcd_client etcd_peer pg_bin
    etcd_client="$(free_port)"; etcd_peer="$(free_port)"
    pg_bin="$(dirname "$(command -v initdb || echo /usr/lib/postgresql/15/bin/initdb)")"
    etcd --name etcd0 --data-dir "$PATRONI_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_client" \
        --advertise-client-urls "http://127.0.0.1:$etcd_client" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "etcd0=http://127.0.0.1:$etcd_peer" \
        >"$PATRONI_DIR/etcd.log" 2>&1 &
    PATRONI_ETCD_PID=$!
    wait_port "$etcd_client"
    local hosts=""
    for i in $(seq 0 $((PATRONI_MEMBERS - 1))); do
        PATRONI_PG_PORTS[$i]="$(free_port)"; PATRONI_API_PORTS[$i]="$(free_port)"
        hosts="$hosts,127.0.0.1:${PATRONI_PG_PORTS[$i]}"
        cat >"$PATRONI_DIR/pg$i.yml" <<EOF
scope: natter
name: pg$i
restapi:
  listen: 127.0.0.1:${PATRONI_API_PORTS[$i]}
  connect_address: 127.0.0.1:${PATRONI_API_PORTS[$i]}
etcd3:
  hosts: 127.0.0.1:$etcd_client
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        synchronous_commit: "on"
        wal_log_hints: "on"
        max_connections: 300
        max_wal_senders: 10
        max_replication_slots: 10
  initdb: [{encoding: UTF8}, {locale: C}]
postgresql:
  listen: 127.0.0.1:${PATRONI_PG_PORTS[$i]}
  connect_address: 127.0.0.1:${PATRONI_PG_PORTS[$i]}
  data_dir: $PATRONI_DIR/pg$i
  bin_dir: $pg_bin
  pgpass: $PATRONI_DIR/pgpass$i
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator}
    rewind: {username: postgres, password: postgres}
  parameters:
    unix_socket_directories: $PATRONI_DIR
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
EOF
    done
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$PATRONI_DIR"
    for i in $(seq 0 $((PATRONI_MEMBERS - 1))); do
        patroni_restart "$i"
        # The first member bootstraps; the others copy it once it leads.
        [ "$i" = 0 ] && patroni_wait_for "primary" 0 60
    done
    for i in $(seq 1 $((PATRONI_MEMBERS - 1))); do patroni_wait_for "replica" "$i" 60; done
    patroni_wait_sync 30
    PATRONI_HOSTS="${hosts#,}"
    log "patroni: ${PATRONI_MEMBERS} members, primary pg$(patroni_leader), synchronous standby ready"
}

patroni_url() {
    echo "postgres://postgres@$PATRONI_HOSTS/$1?target_session_attrs=read-write"
}

# Waits until member I's REST API answers 200 on /ROLE (primary, replica, sync).
patroni_wait_for() {
    local role=$1 i=$2 seconds=$3
    for _ in $(seq $((seconds * 10))); do
        curl -sf -o /dev/null "http://127.0.0.1:${PATRONI_API_PORTS[$i]}/$role" && return 0
        sleep 0.1
    done
    log "patroni: pg$i is not $role after ${seconds}s"; tail -20 "$PATRONI_DIR/pg$i.log" >&2
    return 1
}

# Waits until some member is the synchronous standby.
patroni_wait_sync() {
    for _ in $(seq $(($1 * 10))); do
        patroni_member sync >/dev/null && return 0
        sleep 0.1
    done
    log "patroni: no synchronous standby after $1s"; return 1
}

# Prints the index of the first member whose REST API answers 200 on /ROLE.
patroni_member() {
    for i in $(seq 0 $((PATRONI_MEMBERS - 1))); do
        curl -sf -o /dev/null "http://127.0.0.1:${PATRONI_API_PORTS[$i]}/$1" && { echo "$i"; return 0; }
    done
    return 1
}

patroni_leader() { patroni_member primary; }

patroni_kill() {
    local i=$1 postmaster
    postmaster="$(head -1 "$PATRONI_DIR/pg$i/postmaster.pid" 2>/dev/null || true)"
    kill -KILL "${PATRONI_PIDS[$i]}" ${postmaster:+"$postmaster"} 2>/dev/null || true
}

patroni_restart() {
    local i=$1
    # setpriv execs (runuser would fork), so the PID is Patroni's own.
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=postgres --regid=postgres --init-groups \
            patroni "$PATRONI_DIR/pg$i.yml" >>"$PATRONI_DIR/pg$i.log" 2>&1 &
    else
        patroni "$PATRONI_DIR/pg$i.yml" >>"$PATRONI_DIR/pg$i.log" 2>&1 &
    fi
    PATRONI_PIDS[$i]=$!
}

patroni_stop() {
    for i in "${!PATRONI_PIDS[@]}"; do patroni_kill "$i"; done
    [ -n "${PATRONI_ETCD_PID:-}" ] && kill "$PATRONI_ETCD_PID" 2>/dev/null || true
}
