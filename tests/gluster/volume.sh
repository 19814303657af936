#!/bin/sh
# A one-brick GlusterFS volume on 127.0.0.1, mounted twice through its FUSE client, as two hosts
# would mount it. Run as root inside private network, mount and UTS namespaces
# (unshare --net --mount --uts --fork): its host name, /etc/hosts and glusterd's fixed paths are
# bind-mounted over inside them, and glusterd's state lives under STATE.
#   volume.sh start STATE MNT1 MNT2
#   volume.sh stop STATE
# glusterd refuses a brick named 127.0.0.1 or localhost; a host name of our own that resolves to
# 127.0.0.1 and is this host's name is taken as local. Its CLI talks over a socket file, which a
# network namespace does not isolate: it is moved under STATE so that no other glusterd answers.
set -eu
HOST=trolleyfs-gluster
VOLUME=trolleyfs
cli() { gluster --mode=script --glusterd-sock="$STATE/run/glusterd.socket" "$@"; }

[ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] || { echo "volume.sh: run me in a private network namespace" >&2; exit 1; }

start() {
    rm -rf "$STATE"
    mkdir -p "$STATE/lib" "$STATE/run" "$STATE/log" "$STATE/brick" "$MNT1" "$MNT2" /run/gluster /var/log/glusterfs
    printf '127.0.0.1 localhost %s\n' "$HOST" > "$STATE/hosts"
    mount --bind "$STATE/hosts" /etc/hosts
    hostname "$HOST"
    mount --bind "$STATE/run" /run/gluster
    mount --bind "$STATE/log" /var/log/glusterfs
    cat > "$STATE/glusterd.vol" <<VOL
volume management
    type mgmt/glusterd
    option working-directory $STATE/lib
    option transport-type socket
    option transport.address-family inet
    option transport.socket.bind-address 127.0.0.1
    option glusterd-sockfile $STATE/run/glusterd.socket
    option transport.socket.listen-port 24007
    option ping-timeout 0
    option event-threads 1
end-volume
VOL
    glusterd -f "$STATE/glusterd.vol" -p "$STATE/glusterd.pid" -l "$STATE/log/glusterd.log"
    tries=0
    until cli volume list >/dev/null 2>&1; do
        tries=$((tries + 1)); [ $tries -lt 120 ] || { echo "volume.sh: glusterd did not answer" >&2; exit 1; }
        sleep 0.25
    done
    cli volume create "$VOLUME" "$HOST:$STATE/brick" force
    # what one client publishes must show at once in the other's lookups and listings: no client
    # caching of entries, listings or attributes (docs/cluster.md)
    for option in performance.readdir-ahead performance.stat-prefetch performance.nl-cache \
            performance.quick-read performance.io-cache performance.open-behind; do
        cli volume set "$VOLUME" "$option" off >/dev/null
    done
    cli volume start "$VOLUME"
    for mnt in "$MNT1" "$MNT2"; do
        mount -t glusterfs -o "log-file=$STATE/log/client-$(basename "$mnt").log,attribute-timeout=0,entry-timeout=0,negative-timeout=0" \
            "$HOST:/$VOLUME" "$mnt"
        tries=0
        until grep -q " $mnt fuse.glusterfs " /proc/mounts && ls "$mnt" >/dev/null 2>&1; do
            tries=$((tries + 1)); [ $tries -lt 120 ] || { echo "volume.sh: $mnt not usable" >&2; exit 1; }
            sleep 0.25
        done
    done
    printf '%s\n%s\n' "$MNT1" "$MNT2" > "$STATE/mounts"
}

stop() {
    [ -f "$STATE/mounts" ] && while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < "$STATE/mounts"
    cli volume stop "$VOLUME" force >/dev/null 2>&1 || true
    pids=$(cat "$STATE/glusterd.pid" "$STATE"/run/*.pid "$STATE"/run/vols/*/*.pid 2>/dev/null || true)
    pids="$pids $(pgrep -f "volfile-id=/$VOLUME" || true)"
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
}

command=${1:-}; STATE=${2:-}
case "$command" in
    start) [ $# -eq 4 ] || { echo "usage: volume.sh start STATE MNT1 MNT2" >&2; exit 2; }; MNT1=$3; MNT2=$4; start ;;
    stop) [ $# -eq 2 ] || { echo "usage: volume.sh stop STATE" >&2; exit 2; }; stop ;;
    *) echo "usage: volume.sh start STATE MNT1 MNT2 | stop STATE" >&2; exit 2 ;;
esac
