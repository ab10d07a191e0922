#!/usr/bin/env bash
# Overhead of statexec's per-process probes, as ratios measured in one run:
#   1. wall time of `statexec exec true` vs bare `true` (plain and ebpf)
#   2. `perf bench sched pipe` under statexec (ebpf, plain) vs bare, and bare
#      while an eBPF run of statexec is attached elsewhere (global cost of the
#      sched tracepoints for tasks outside the cgroup)
#   3. iperf3 loopback throughput, client under statexec vs bare
# Needs root for the eBPF runs; hyperfine, perf (linux-perf) and iperf3 are
# used when installed, otherwise that part is skipped (1. falls back to a
# bash loop). Knobs: REPS (short-command repetitions), ROUNDS (alternating
# rounds of the longer benchmarks), PIPE_LOOPS, IPERF_SECS.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-/tmp/statexec-bench}
REPS=${REPS:-200}
ROUNDS=${ROUNDS:-7}
PIPE_LOOPS=${PIPE_LOOPS:-100000}
IPERF_SECS=${IPERF_SECS:-5}
IPERF_PORT=${IPERF_PORT:-5299}
NCPU=$(nproc)
PIN_CPU=${PIN_CPU:-$((NCPU - 1))}
TMP=$(mktemp -d /tmp/statexec-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

go build -o "$BIN" .

# se MODE CMD... runs CMD under statexec with the given probes backend.
se() {
	local mode=$1
	shift
	SE_PROBES=$mode SE_METRICS_FILE=$TMP/metrics-$mode.txt SE_SUMMARY=0 "$BIN" exec "$@"
}

# Check that the eBPF backend really loads here; otherwise say so once.
if se ebpf true 2>"$TMP/ebpf.err"; then
	EBPF=1
else
	EBPF=0
	echo "eBPF backend unavailable: $(head -1 "$TMP/ebpf.err")" >&2
fi
MODES=(plain)
[[ $EBPF == 1 ]] && MODES+=(ebpf)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.3f", a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "== 1. short command: statexec exec true vs true ($REPS runs each)"
# mean wall time in milliseconds
mean_ms() {
	if command -v hyperfine >/dev/null; then
		hyperfine -N --warmup 5 --runs "$REPS" --export-json "$TMP/h.json" -- "$*" >/dev/null 2>&1
		python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"]*1000)' "$TMP/h.json"
	else
		local start end
		start=$(date +%s%N)
		for ((i = 0; i < REPS; i++)); do "$@" >/dev/null 2>&1; done
		end=$(date +%s%N)
		awk -v d=$((end - start)) -v n="$REPS" 'BEGIN { printf "%.3f", d / n / 1e6 }'
	fi
}
bare=$(mean_ms true)
printf "  %-22s %8.2f ms\n" "true" "$bare"
for m in "${MODES[@]}"; do
	# hyperfine -N runs without a shell, so pass the environment via env.
	t=$(mean_ms env SE_PROBES="$m" SE_METRICS_FILE="$TMP/m.txt" SE_SUMMARY=0 "$BIN" exec true)
	printf "  %-22s %8.2f ms  added %6.2f ms  ratio %s\n" "statexec($m) true" "$t" \
		"$(awk -v a="$t" -v b="$bare" 'BEGIN { print a - b }')" "$(ratio "$t" "$bare")"
done

if command -v perf >/dev/null; then
	echo "== 2. perf bench sched pipe -l $PIPE_LOOPS on CPU $PIN_CPU (usecs/op, median of $ROUNDS alternating rounds)"
	# Both tasks pinned to one CPU: without pinning, where the scheduler
	# places them changes the result by more than the probes do.
	pipe() { "$@" taskset -c "$PIN_CPU" perf bench sched pipe -l "$PIPE_LOOPS" 2>/dev/null | awk '/usecs\/op/ { print $1 }'; }
	: >"$TMP/pipe-bare"
	for m in "${MODES[@]}"; do : >"$TMP/pipe-$m"; done
	: >"$TMP/pipe-outside"
	for ((r = 0; r < ROUNDS; r++)); do
		pipe env >>"$TMP/pipe-bare"
		for m in "${MODES[@]}"; do pipe se "$m" >>"$TMP/pipe-$m"; done
		if [[ $EBPF == 1 ]]; then
			# Probes attached (for a sleeping command's cgroup) while the
			# benchmark runs outside it: what every other task pays.
			SE_PROBES=ebpf SE_METRICS_FILE=$TMP/holder.txt SE_SUMMARY=0 "$BIN" exec sleep 3600 &
			holder=$!
			PIDS+=("$holder")
			sleep 0.3
			pipe env >>"$TMP/pipe-outside"
			kill "$holder" 2>/dev/null || true
			wait "$holder" 2>/dev/null || true
		fi
	done
	b=$(median <"$TMP/pipe-bare")
	printf "  %-34s %8.3f usecs/op\n" "bare" "$b"
	for m in "${MODES[@]}"; do
		v=$(median <"$TMP/pipe-$m")
		printf "  %-34s %8.3f usecs/op  slowdown %s\n" "under statexec($m)" "$v" "$(ratio "$v" "$b")"
	done
	if [[ $EBPF == 1 ]]; then
		v=$(median <"$TMP/pipe-outside")
		printf "  %-34s %8.3f usecs/op  slowdown %s\n" "outside, ebpf probes attached" "$v" "$(ratio "$v" "$b")"
	fi
else
	echo "== 2. skipped: perf not installed (apt-get install linux-perf)"
fi

if command -v iperf3 >/dev/null; then
	echo "== 3. iperf3 loopback, ${IPERF_SECS}s per run (Gbit/s received, median of $ROUNDS alternating rounds)"
	# Server and client on different CPUs (when there are two).
	taskset -c 0 iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >/dev/null 2>&1 &
	PIDS+=($!)
	sleep 0.5
	iperf() {
		"$@" taskset -c "$PIN_CPU" iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$IPERF_SECS" -J 2>/dev/null |
			python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
	}
	: >"$TMP/iperf-bare"
	for m in "${MODES[@]}"; do : >"$TMP/iperf-$m"; done
	for ((r = 0; r < ROUNDS; r++)); do
		iperf env >>"$TMP/iperf-bare"
		for m in "${MODES[@]}"; do iperf se "$m" >>"$TMP/iperf-$m"; done
	done
	b=$(median <"$TMP/iperf-bare")
	printf "  %-22s %8.2f Gbit/s\n" "bare" "$b"
	for m in "${MODES[@]}"; do
		v=$(median <"$TMP/iperf-$m")
		printf "  %-22s %8.2f Gbit/s  ratio %s\n" "under statexec($m)" "$v" "$(ratio "$v" "$b")"
	done
else
	echo "== 3. skipped: iperf3 not installed"
fi
