#!/usr/bin/env bash
# The README's iperf3 example, on one machine: an iperf3 server and client
# under statexec, in two network namespaces joined by a veth pair (two
# "hosts"), started and stopped together with waitStartAndStop and
# syncStartAndStop, on one time origin.
#
# usage: scripts/example.sh [output-dir] [seconds]   (root; default: example/ 5)
# writes <output-dir>/statexec_metrics.txt (client) and
#        <output-dir>/statexec_metrics_server.txt (server)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-example}")
secs=${2:-5}
bin=${STATEXEC:-$PWD/bin/statexec}
[ -x "$bin" ] || go build -o "$bin" .
mkdir -p "$out"

# Namespace and interface names unique per run (pid and a random
# suffix), so parallel runs don't collide.
tag=$$$(od -An -N2 -tx2 /dev/urandom | tr -d ' ')
tag=${tag: -8}
srv=se-srv-$tag cli=se-cli-$tag
cleanup() {
    ip netns pids "$srv" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns pids "$cli" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$srv" 2>/dev/null || true
    ip netns del "$cli" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$srv"
ip netns add "$cli"
ip link add "vs$tag" netns "$srv" type veth peer name "vc$tag" netns "$cli"
ip -n "$srv" addr add 10.77.0.1/24 dev "vs$tag"
ip -n "$cli" addr add 10.77.0.2/24 dev "vc$tag"
for ns in "$srv" "$cli"; do
    ip -n "$ns" link set lo up
done
ip -n "$srv" link set "vs$tag" up
ip -n "$cli" link set "vc$tag" up

# One time origin for both sides: both take the sync instant as t = origin.
origin=$(date +%s%3N)
export SE_TIME_RELATIVE=$origin SE_INTERVAL=${SE_INTERVAL:-500ms}

# nsenter --net enters only the network namespace: unlike `ip netns exec`
# it keeps the mounts, so statexec still finds the cgroup2 hierarchy.
SE_METRICS_FILE="$out/statexec_metrics_server.txt" SE_INSTANCE=server \
    nsenter --net=/run/netns/"$srv" "$bin" waitStartAndStop iperf3 -s -B 10.77.0.1 &
server=$!

# The server's iperf3 starts when /start arrives; the client's 2 s wait
# after the sync gives it time to listen before the client's connects.
SE_METRICS_FILE="$out/statexec_metrics.txt" SE_INSTANCE=client SE_WAIT_TIME_BEFORE_COMMAND=2 \
    nsenter --net=/run/netns/"$cli" "$bin" syncStartAndStop http://10.77.0.1:8080 \
    iperf3 -c 10.77.0.1 -t "$secs"
client=$?
wait "$server"
server_code=$?
echo "client exit $client, server exit $server_code; files in $out"
[ "$client" -eq 0 ] && [ "$server_code" -eq 0 ]
