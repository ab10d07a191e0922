#!/usr/bin/env bash
# statexec's overhead, measured as interleaved A/B pairs: each round runs
# the baseline and every variant back to back, so that a machine getting
# busier or quieter shifts both sides of a pair alike. Each comparison
# prints the median, the spread (min-max) and the per-pair ratio (median
# and spread of the ratios), never a single run:
#   0. BenchmarkTick: one whole sampling tick in-process (host collectors,
#      probe, spool append): ns/op, CPU ns/op and allocs/op, in a hot loop
#      and (BenchmarkTickIdle) one tick every 100 ms and every 1 s, as a
#      run takes them: its CPU ns/op is what part 1 measures of a run
#   1. own CPU per sample at SE_INTERVAL=1s and 100ms, steady state:
#      statexec's CPU time (its threads' schedstat, children not counted)
#      between two instants of an `exec sleep N`, divided by the samples
#      its file holds between them; pidstat -p sampling a sleeping
#      process every second is the baseline. The 1 s runs (`exec sleep
#      20` by default) also give statexec's peak RSS (VmHWM) and its RSS
#      at a quarter and at the end of the run (flat or not)
#   2. `perf bench sched pipe`, pinned to one CPU, under statexec vs bare
#      (and under statexec with the opt-in run-queue histogram, ebpf-runq)
#   3. wall time added to `statexec exec true` vs bare `true`
#   4. iperf3 loopback throughput, client under statexec vs bare
#   5. remote write at SE_INTERVAL=10ms to a local VictoriaMetrics:
#      samples pushed per second, statexec's own CPU with and without it
#      (pairs), and the rate of `statexec push` of the file
#   6. the drop group's kfree_skb hook: cost per dropped packet
#   7. perf events and block tracepoints on a cgroup vs a bare cgroup
# Every target of issue 8 is printed with its threshold next to the
# measured median and spread, PASS or MISS, and again in a table at the
# end.
# Each comparison runs for the plain backend and, where it loads (root),
# the eBPF one. Uses perf (linux-perf), hyperfine, pidstat (sysstat) and
# iperf3 (scripts/install-deps.sh installs them); a part whose tool is
# missing is skipped with a line saying so. Knobs: ROUNDS (pairs per comparison),
# CPU_SECS_1S / CPU_SECS_100MS (length of the steady runs; the 1 s ones
# are also the RSS runs), PIPE_LOOPS, TRUE_RUNS (runs of `true` per side
# of a pair), IPERF_SECS, TICKS (BenchmarkTick iterations), IDLE_TICKS
# (BenchmarkTickIdle's, each interval and mode), RW_SECS (part 5),
# DROP_SENDS (part 6), DIRECT_READS, DIRECT_DIR and ROUNDS7 (part 7).
# PARTS (default "0 1 2 3 4 5 6 7") runs only the parts listed.
# Figures from a machine that other work keeps busy are not figures: look
# at the spread before quoting a median.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${BIN:-/tmp/statexec-bench}
ROUNDS=${ROUNDS:-3}
CPU_SECS_1S=${CPU_SECS_1S:-20}
CPU_SECS_100MS=${CPU_SECS_100MS:-6}
PIPE_LOOPS=${PIPE_LOOPS:-100000}
TRUE_RUNS=${TRUE_RUNS:-30}
IPERF_SECS=${IPERF_SECS:-3}
TICKS=${TICKS:-2000}
IDLE_TICKS=${IDLE_TICKS:-20}
NCPU=$(nproc)
PIN_CPU=${PIN_CPU:-$((NCPU - 1))}
TMP=$(mktemp -d /tmp/statexec-bench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT

CGO_ENABLED=0 go build -o "$BIN" . # as make build

have() { command -v "$1" >/dev/null; }

PARTS=${PARTS:-0 1 2 3 4 5 6 7}
# part N: whether part N is to run (PARTS).
part() { [[ " $PARTS " == *" $1 "* ]]; }

# se MODE CMD... runs CMD under statexec with the given probes backend.
# MODE ebpf-runq is the eBPF backend with the opt-in run-queue histogram
# (group runq: a program on every context switch).
se() {
	local mode=$1 probes=$1 hist=0
	shift
	if [[ $mode == ebpf-runq ]]; then probes=ebpf hist=1; fi
	SE_RUNQUEUE_HISTOGRAM=$hist SE_PROBES=$probes SE_METRICS_FILE=$TMP/metrics-$mode.txt SE_SUMMARY=0 "$BIN" exec "$@"
}

# Check that the eBPF backend really loads here; otherwise say so once.
if se ebpf true 2>"$TMP/ebpf.err"; then
	MODES=(plain ebpf)
else
	MODES=(plain)
	echo "eBPF backend unavailable: $(head -1 "$TMP/ebpf.err")" >&2
fi

# stats FILE: "median M (min A, max B, n N)" of the numbers in FILE.
stats() {
	sort -g "$1" | awk '{ v[NR] = $1 }
		END {
			if (NR == 0) { print "no data"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "median %.4g (min %.4g, max %.4g, n %d)", m, v[1], v[NR], NR
		}'
}
# div A B: A/B, or nothing when B is 0.
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b != 0) printf "%.6g\n", a / b }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6g\n", a - b }'; }
# row LABEL FILE [UNIT]: one printed line.
row() { printf "  %-38s %s %s\n" "$1" "$(stats "$2")" "${3:-}"; }
# median FILE: the median of the numbers in FILE, nothing when empty.
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR) print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# target LABEL FILE LIMIT UNIT: the median of FILE against an upper limit
# of issue 8's table, PASS or MISS, printed now and in the final table.
TARGETS=()
target() {
	local m verdict line
	m=$(median "$2")
	if [[ -z $m ]]; then
		verdict="NO DATA"
	elif awk -v m="$m" -v l="$3" 'BEGIN { exit !(m <= l) }'; then
		verdict=PASS
	else
		verdict=MISS
	fi
	line=$(printf "%-46s %-42s <= %s %s  %s" "$1" "$(stats "$2")" "$3" "$4" "$verdict")
	echo "  TARGET $line"
	TARGETS+=("$line")
}

# paired FN UNIT UNDER RATIO runs `FN env` (bare) and `FN se MODE` for each
# mode in turn, ROUNDS times, each printing one figure; then prints the
# bare figures, each mode's (UNDER is a printf format for the mode) and
# the per-pair ratio mode/bare.
paired() {
	local fn=$1 unit=$2 under=$3 ratio=$4 r m b v
	: >"$TMP/$fn-bare"
	for m in "${MODES[@]}"; do : >"$TMP/$fn-$m" && : >"$TMP/$fn-ratio-$m"; done
	for ((r = 0; r < ROUNDS; r++)); do
		b=$("$fn" env)
		echo "$b" >>"$TMP/$fn-bare"
		for m in "${MODES[@]}"; do
			v=$("$fn" se "$m")
			echo "$v" >>"$TMP/$fn-$m"
			div "$v" "$b" >>"$TMP/$fn-ratio-$m"
		done
	done
	row "bare" "$TMP/$fn-bare" "$unit"
	for m in "${MODES[@]}"; do
		# shellcheck disable=SC2059 # UNDER is the format
		row "$(printf "$under" "$m")" "$TMP/$fn-$m" "$unit"
		row "  $ratio, per pair" "$TMP/$fn-ratio-$m" x
	done
}

# task_ns PID: CPU time (ns) of PID's threads so far, from schedstat
# (exact; /proc/PID/stat counts 10 ms ticks).
task_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%d\n", s }'; }
now_ms() { date +%s%3N; }
# sleep_until T: sleeps until epoch ms T (at once if past).
sleep_until() { sleep "$(awk -v t="$1" -v n="$(now_ms)" 'BEGIN { d = (t - n) / 1000; print (d > 0 ? d : 0) }')"; }
# window PID START: CPU ns of PID from START+WARM_MS to START+WARM_MS+WINDOW_MS
# (epoch ms), as "ns t1 t2"; nothing if PID ended before.
window() {
	local a b t1 t2
	sleep_until $(($2 + WARM_MS))
	a=$(task_ns "$1") t1=$(now_ms)
	sleep_until $(($2 + WARM_MS + WINDOW_MS))
	b=$(task_ns "$1") t2=$(now_ms)
	if [[ -d /proc/$1 && $a -gt 0 && $b -ge $a ]]; then echo "$((b - a)) $t1 $t2"; fi
}
# samples_between FILE T1 T2: samples of the run in FILE taken in (T1, T2]
# (epoch ms): one statexec_command_status point per sample.
samples_between() {
	awk -v a="$2" -v b="$3" '/^statexec_command_status[{ ]/ { t = $NF; if (t < 1e11) t *= 1000; if (t > a && t <= b) n++ } END { print n + 0 }' "$1"
}

# 0. one tick in-process (root: the probe's cgroup and BPF).
part 0 && echo "== 0. BenchmarkTick ($TICKS ticks: host collectors + probe with sh and two sleeps in its cgroup + spool append)"
# tickbench NAME TICKS: prints the benchmarks' lines.
tickbench() {
	go test -count=1 -run '^$' -bench "$1" -benchtime "${2}x" ./internal/sampler/ 2>&1 |
		awk '/^BenchmarkTick/ { printf "  %-34s %10.0f ns/op  %8.0f CPU ns/op  %6d B/op  %5d allocs/op\n", $1, $3, $5, $7, $9 }
			/SKIP|skip/ { print "  " $0 }'
}
part 0 && tickbench 'BenchmarkTick$' "$TICKS"
part 0 && echo "   one tick every 100 ms and every 1 s ($IDLE_TICKS ticks each; CPU ns/op is the process's over the loop, as part 1)"
part 0 && tickbench 'BenchmarkTickIdle' "$IDLE_TICKS"

# rss_watch PID START OUT: polls PID's VmRSS and VmHWM (KiB) every 0.1 s
# until it ends and writes "rss-at-a-quarter rss-at-the-end peak" to OUT
# (a quarter of CPU_SECS_1S after START, epoch ms).
rss_watch() {
	local q="" last="" hwm="" v h i
	for ((i = 0; i < CPU_SECS_1S * 10 + 100; i++)); do
		v=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null || true)
		h=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$1/status" 2>/dev/null || true)
		[[ -z $v || -z $h ]] && break
		last=$v hwm=$h
		if [[ -z $q && $(now_ms) -ge $(($2 + CPU_SECS_1S * 250)) ]]; then q=$v; fi
		sleep 0.1
	done
	echo "${q:-$last} $last $hwm" >"$3"
}

# 1. own CPU per sample in steady state: the CPU time a running process
# uses between two instants well after its start and before its end,
# divided by the samples it took in between. pidstat -p sampling the same
# kind of sleeping process every second is the baseline (it takes whole
# seconds only, so its cost is per 1 s sample at both intervals).
per_sample_cost() {
	local interval=$1 secs=$2 label=$3
	local m f r pid start w target pid_ms per watcher q e h
	# From a quarter of the run (after start-up) to 1.5 s before its end.
	WARM_MS=$((secs * 250)) WINDOW_MS=$((secs * 750 - 1500))
	echo "== 1. own CPU per sample at SE_INTERVAL=$interval, steady state (exec sleep $secs, ${WINDOW_MS} ms from ${WARM_MS} ms on; $ROUNDS pairs)"
	: >"$TMP/pid-$label"
	for m in "${MODES[@]}"; do : >"$TMP/cpu-$label-$m" && : >"$TMP/ratio-$label-$m"; done
	for m in "${MODES[@]}"; do : >"$TMP/hwm-$m" && : >"$TMP/rss-q-$m" && : >"$TMP/rss-end-$m" && : >"$TMP/rss-growth-$m"; done
	for ((r = 0; r < ROUNDS; r++)); do
		pid_ms=""
		if have pidstat; then
			sleep "$((secs + 2))" &
			target=$!
			PIDS+=("$target")
			start=$(now_ms)
			pidstat -p "$target" 1 "$secs" >/dev/null &
			pid=$!
			w=$(window "$pid" "$start")
			wait "$pid" || true
			kill "$target" 2>/dev/null || true
			wait "$target" 2>/dev/null || true
			if [[ -n $w ]]; then
				pid_ms=$(awk -v c="${w%% *}" -v a="$(cut -d' ' -f2 <<<"$w")" -v b="${w##* }" 'BEGIN { printf "%.6g\n", c / 1e6 / ((b - a) / 1000) }')
				echo "$pid_ms" >>"$TMP/pid-$label"
			fi
		fi
		for m in "${MODES[@]}"; do
			f=$TMP/cpu-$m.txt
			start=$(now_ms)
			SE_INTERVAL=$interval SE_PROBES=$m SE_METRICS_FILE=$f SE_SUMMARY=0 "$BIN" exec sleep "$secs" &
			pid=$!
			PIDS+=("$pid")
			watcher=""
			if [[ $label == 1s ]]; then
				rss_watch "$pid" "$start" "$TMP/rss-now" &
				watcher=$!
			fi
			w=$(window "$pid" "$start")
			if [[ -n $watcher ]]; then
				wait "$watcher" || true
				read -r q e h <"$TMP/rss-now"
				awk -v k="$q" 'BEGIN { printf "%.2f\n", k / 1024 }' >>"$TMP/rss-q-$m"
				awk -v k="$e" 'BEGIN { printf "%.2f\n", k / 1024 }' >>"$TMP/rss-end-$m"
				awk -v k="$h" 'BEGIN { printf "%.2f\n", k / 1024 }' >>"$TMP/hwm-$m"
				awk -v a="$q" -v b="$e" 'BEGIN { printf "%.2f\n", (b - a) / 1024 }' >>"$TMP/rss-growth-$m"
			fi
			if ! wait "$pid"; then
				echo "  round $r, $m: statexec failed (exit $?); round skipped" >&2
				continue
			fi
			if [[ -z $w ]]; then
				echo "  round $r, $m: statexec ended before the window closed (machine too busy?); round skipped" >&2
				continue
			fi
			per=$(awk -v c="${w%% *}" -v n="$(samples_between "$f" "$(cut -d' ' -f2 <<<"$w")" "${w##* }")" \
				'BEGIN { if (n > 0) printf "%.6g\n", c / 1e6 / n }')
			echo "$per" >>"$TMP/cpu-$label-$m"
			if [[ -n $pid_ms && -n $per ]]; then div "$per" "$pid_ms" >>"$TMP/ratio-$label-$m"; fi
		done
	done
	if have pidstat; then
		row "pidstat -p PID 1, per sample" "$TMP/pid-$label" ms
	else
		echo "  (pidstat not installed: apt-get install sysstat)"
	fi
	for m in "${MODES[@]}"; do
		row "statexec($m), per sample" "$TMP/cpu-$label-$m" ms
		if [[ -s $TMP/ratio-$label-$m ]]; then row "  ratio to pidstat, per pair" "$TMP/ratio-$label-$m" x; fi
		if [[ $interval == *ms ]]; then
			awk -v i="${interval%ms}" '{ printf "%.6g\n", $1 * 1000 / i }' "$TMP/cpu-$label-$m" >"$TMP/cpus-$label-$m"
			row "  per second of run" "$TMP/cpus-$label-$m" ms/s
			target "own CPU at SE_INTERVAL=$interval, $m" "$TMP/cpus-$label-$m" 3 ms/s
		else
			target "own CPU per sample at $interval, $m" "$TMP/cpu-$label-$m" 0.3 ms
		fi
		if [[ $label == 1s ]]; then
			row "statexec($m) peak RSS (VmHWM)" "$TMP/hwm-$m" MiB
			row "  RSS at a quarter of the run" "$TMP/rss-q-$m" MiB
			row "  RSS at the end" "$TMP/rss-end-$m" MiB
			target "peak RSS, exec sleep $secs, $m" "$TMP/hwm-$m" 16 MiB
			# Flat: what the RSS grew by from a quarter of the run to its end.
			target "RSS growth, quarter to end (flat), $m" "$TMP/rss-growth-$m" 0.5 MiB
		fi
	done
}
if part 1; then
	per_sample_cost 1s "$CPU_SECS_1S" 1s
	per_sample_cost 100ms "$CPU_SECS_100MS" 100ms
fi

# 2. perf bench sched pipe, pinned: both tasks on one CPU, since where the
# scheduler places them changes the result by more than the probes do.
if part 2 && have perf; then
	echo "== 2. perf bench sched pipe -l $PIPE_LOOPS on CPU $PIN_CPU (usecs/op; $ROUNDS pairs)"
	pipe() { "$@" taskset -c "$PIN_CPU" perf bench sched pipe -l "$PIPE_LOOPS" 2>/dev/null | awk '/usecs\/op/ { print $1 }'; }
	# The default groups run no program per context switch; the opt-in
	# run-queue histogram (ebpf-runq) does, in the same interleaved pairs.
	saved_modes=("${MODES[@]}")
	if [[ " ${MODES[*]} " == *" ebpf "* ]]; then MODES+=(ebpf-runq); fi
	paired pipe usecs/op "under statexec(%s)" slowdown
	for m in "${MODES[@]}"; do target "sched pipe slowdown, $m" "$TMP/pipe-ratio-$m" 1.02 x; done
	MODES=("${saved_modes[@]}")
elif part 2; then
	echo "== 2. skipped: perf not installed (apt-get install linux-perf)"
fi

# 3. wall time added to a command that does nothing.
if part 3 && have hyperfine; then
	echo "== 3. wall time of exec true vs true ($TRUE_RUNS runs a side, $ROUNDS pairs)"
	# mean_ms CMD...: mean wall time over TRUE_RUNS runs, without a shell.
	mean_ms() {
		hyperfine -N --warmup 3 --runs "$TRUE_RUNS" --export-json "$TMP/h.json" -- "$*" >/dev/null 2>&1
		python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"]*1000)' "$TMP/h.json"
	}
	: >"$TMP/true-bare"
	for m in "${MODES[@]}"; do : >"$TMP/true-$m" && : >"$TMP/true-added-$m"; done
	for ((r = 0; r < ROUNDS; r++)); do
		b=$(mean_ms true)
		echo "$b" >>"$TMP/true-bare"
		for m in "${MODES[@]}"; do
			# hyperfine -N runs without a shell: the environment via env.
			v=$(mean_ms env SE_PROBES="$m" SE_METRICS_FILE="$TMP/m.txt" SE_SUMMARY=0 "$BIN" exec true)
			echo "$v" >>"$TMP/true-$m"
			sub "$v" "$b" >>"$TMP/true-added-$m"
		done
	done
	row "true" "$TMP/true-bare" ms
	for m in "${MODES[@]}"; do
		row "statexec($m) exec true" "$TMP/true-$m" ms
		row "  added, per pair" "$TMP/true-added-$m" ms
		row "  ratio to bare, per pair" <(paste "$TMP/true-$m" "$TMP/true-bare" | awk '$2 > 0 { printf "%.6g\n", $1 / $2 }') x
		limit=6
		if [[ $m == ebpf ]]; then limit=9; fi
		target "wall added to exec true, $m" "$TMP/true-added-$m" "$limit" ms
	done
elif part 3; then
	echo "== 3. skipped: hyperfine not installed"
fi

# 4. iperf3 loopback throughput (no target: a ratio of 1 within the spread).
if part 4 && have iperf3; then
	echo "== 4. iperf3 loopback, ${IPERF_SECS}s a run (Gbit/s received; $ROUNDS pairs)"
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	# Server and client on different CPUs (when there are two).
	taskset -c 0 iperf3 -s -B 127.0.0.1 -p "$port" >/dev/null 2>&1 &
	PIDS+=($!)
	for ((i = 0; i < 50; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
		sleep 0.1
	done
	iperf() {
		"$@" taskset -c "$PIN_CPU" iperf3 -c 127.0.0.1 -p "$port" -t "$IPERF_SECS" -J 2>/dev/null |
			python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
	}
	paired iperf Gbit/s "client under statexec(%s)" ratio
	# Group tcp: the eBPF side of this pair runs every probe group that
	# loads here (sock_ops RTT callbacks fire on every ACK): say which.
	if [[ -f $TMP/metrics-ebpf.txt ]]; then
		echo "  eBPF groups on in these runs: $(grep -o '^statexec_probe_group_enabled{group="[a-z]*"[^}]*} 1' "$TMP/metrics-ebpf.txt" |
			sed 's/.*group="\([a-z]*\)".*/\1/' | sort -u | tr '\n' ' ')"
	fi
elif part 4; then
	echo "== 4. skipped: iperf3 not installed"
fi

# 5. remote write: the samples per second a
# run at SE_INTERVAL=10ms pushes (with the eBPF series when they load)
# and the own CPU it costs: statexec's CPU per second of run with
# SE_REMOTE_WRITE_URL minus without, per pair, over the steady window of
# part 1. Then `statexec push` of that run's file: samples per second.
RW_SECS=${RW_SECS:-8}
if part 5 && have victoria-metrics; then
	m=${MODES[${#MODES[@]} - 1]}
	echo "== 5. remote write at SE_INTERVAL=10ms, statexec($m), exec sleep $RW_SECS, to a local VictoriaMetrics ($ROUNDS pairs)"
	vmport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	victoria-metrics -httpListenAddr=127.0.0.1:"$vmport" -storageDataPath="$TMP/vm" -retentionPeriod=100y >"$TMP/vm.log" 2>&1 &
	PIDS+=($!)
	for ((i = 0; i < 100; i++)); do
		curl -fs "http://127.0.0.1:$vmport/health" >/dev/null 2>&1 && break
		sleep 0.1
	done
	RW_URL=http://127.0.0.1:$vmport/api/v1/write
	WARM_MS=$((RW_SECS * 250)) WINDOW_MS=$((RW_SECS * 750 - 1500))
	: >"$TMP/rw-off" && : >"$TMP/rw-on" && : >"$TMP/rw-added" && : >"$TMP/rw-rate"
	for ((r = 0; r < ROUNDS; r++)); do
		off=""
		for rw in off on; do
			url=""
			if [[ $rw == on ]]; then url=$RW_URL; fi
			start=$(now_ms)
			SE_REMOTE_WRITE_URL=$url SE_INTERVAL=10ms SE_PROBES=$m SE_METRICS_FILE=$TMP/rw-$rw.txt SE_SUMMARY=0 \
				"$BIN" exec sleep "$RW_SECS" 2>"$TMP/rw-$rw.err" &
			pid=$!
			PIDS+=("$pid")
			w=$(window "$pid" "$start")
			if ! wait "$pid" || [[ -z $w ]]; then
				echo "  round $r, remote write $rw: statexec failed or ended early; round skipped: $(tail -1 "$TMP/rw-$rw.err")" >&2
				off=""
				continue
			fi
			v=$(awk -v c="${w%% *}" -v a="$(cut -d' ' -f2 <<<"$w")" -v b="${w##* }" 'BEGIN { printf "%.6g\n", c / 1e6 / ((b - a) / 1000) }')
			echo "$v" >>"$TMP/rw-$rw"
			if [[ $rw == off ]]; then
				off=$v
			else
				if [[ -n $off ]]; then sub "$v" "$off" >>"$TMP/rw-added"; fi
				sent=$(sed -n 's/.*remote write: \([0-9]*\) samples sent.*/\1/p' "$TMP/rw-on.err")
				if [[ -n $sent ]]; then div "$sent" "$RW_SECS" >>"$TMP/rw-rate"; fi
			fi
		done
	done
	row "samples pushed per second of run" "$TMP/rw-rate" samples/s
	row "statexec CPU without remote write" "$TMP/rw-off" ms/s
	row "statexec CPU with remote write" "$TMP/rw-on" ms/s
	row "  added by pushing, per pair" "$TMP/rw-added" ms/s
	: >"$TMP/push-rate"
	n=$(grep -vc '^#' "$TMP/rw-on.txt" || true)
	for ((r = 0; r < ROUNDS; r++)); do
		t0=$(date +%s%N)
		"$BIN" push "$TMP/rw-on.txt" "$RW_URL" 2>/dev/null || { echo "  push failed" >&2; continue; }
		t1=$(date +%s%N)
		awk -v n="$n" -v d="$((t1 - t0))" 'BEGIN { printf "%.6g\n", n / (d / 1e9) }' >>"$TMP/push-rate"
	done
	row "statexec push of that file ($n samples)" "$TMP/push-rate" samples/s
elif part 5; then
	echo "== 5. skipped: victoria-metrics not installed"
fi

# 6. cost of the drop group's kfree_skb hook per dropped packet:
# a loop of UDP sends that an nft rule drops on output, in a namespace
# of its own. Under statexec(ebpf) every drop runs the hook and is
# counted (the run's socket); statexec(plain) has no BPF, and the
# cgroup_skb programs never see these packets (they are dropped before),
# so the difference per packet is the hook. The second pair is the
# same loop outside any run while statexec(ebpf) runs a sleep: the
# hook's cost on other processes' drops (it fires for every drop on the
# host). A dropped send costs microseconds (Python, the EPERM), so this
# pair is rough: look at the spread. The precise figure follows: the
# program's own run time per drop from the kernel's BPF statistics
# (BenchmarkNetobsDropHook).
DROP_SENDS=${DROP_SENDS:-50000}
if part 6 && [[ ${MODES[*]} == *ebpf* ]] && have nft && have nsenter && have ip; then
	echo "== 6. drop hook: ns per dropped UDP send on CPU $PIN_CPU ($DROP_SENDS sends; $ROUNDS pairs)"
	(
		ns=nobbench$$
		trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
		ip netns add "$ns"
		nsenter --net=/run/netns/"$ns" ip link set lo up
		printf 'table inet nobbench {\n chain out {\n  type filter hook output priority 0; policy accept;\n  udp dport 9 counter drop\n }\n}\n' |
			nsenter --net=/run/netns/"$ns" nft -f -
		cat >"$TMP/droploop.py" <<'PY'
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", 9))
b = b"x" * 64
t = time.perf_counter_ns()
for _ in range(n):
    try:
        s.send(b)
    except OSError:
        pass
print((time.perf_counter_ns() - t) / n)
PY
		printf 'exec nsenter --net=/run/netns/%s taskset -c %s python3 %s %s\n' "$ns" "$PIN_CPU" "$TMP/droploop.py" "$DROP_SENDS" >"$TMP/droploop.sh"
		: >"$TMP/drop-plain" && : >"$TMP/drop-ebpf" && : >"$TMP/drop-added"
		: >"$TMP/drop-bare" && : >"$TMP/drop-outside" && : >"$TMP/drop-outside-added"
		for ((r = 0; r < ROUNDS; r++)); do
			p=$(se plain sh "$TMP/droploop.sh")
			e=$(se ebpf sh "$TMP/droploop.sh")
			echo "$p" >>"$TMP/drop-plain" && echo "$e" >>"$TMP/drop-ebpf" && sub "$e" "$p" >>"$TMP/drop-added"
			b=$(sh "$TMP/droploop.sh")
			# The command starts once the probes are attached.
			rm -f "$TMP/drop-ready"
			SE_PROBES=ebpf SE_METRICS_FILE=$TMP/drop-outside.txt SE_SUMMARY=0 "$BIN" exec sh -c 'touch "$1"; exec sleep 600' sh "$TMP/drop-ready" &
			spid=$!
			for ((i = 0; i < 200; i++)); do
				[[ -e $TMP/drop-ready ]] && break
				sleep 0.05
			done
			o=$(sh "$TMP/droploop.sh")
			kill "$spid" 2>/dev/null || true
			wait "$spid" 2>/dev/null || true
			echo "$b" >>"$TMP/drop-bare" && echo "$o" >>"$TMP/drop-outside" && sub "$o" "$b" >>"$TMP/drop-outside-added"
		done
		row "in a run, statexec(plain)" "$TMP/drop-plain" ns/send
		row "in a run, statexec(ebpf)" "$TMP/drop-ebpf" ns/send
		row "  added by the hook (counted drop), per pair" "$TMP/drop-added" ns
		row "outside any run, bare" "$TMP/drop-bare" ns/send
		row "outside, while statexec(ebpf) runs" "$TMP/drop-outside" ns/send
		row "  added by the hook (other's drop), per pair" "$TMP/drop-outside-added" ns
		echo "  BPF run time of the hook (kernel stats; $DROP_SENDS drops a side, $ROUNDS runs):"
		: >"$TMP/drop-hook-counted" && : >"$TMP/drop-hook-other"
		for ((r = 0; r < ROUNDS; r++)); do
			go test -count=1 -run '^$' -bench NetobsDropHook -benchtime "${DROP_SENDS}x" ./internal/probe/ 2>/dev/null |
				awk '/ns\/counted-drop/ { for (i = 1; i < NF; i++) { if ($(i + 1) == "ns/counted-drop") print $i >> c; if ($(i + 1) == "ns/other-drop") print $i >> o } }' \
					c="$TMP/drop-hook-counted" o="$TMP/drop-hook-other"
		done
		row "  per counted drop (the run's socket)" "$TMP/drop-hook-counted" ns
		row "  per other drop (filtered out)" "$TMP/drop-hook-other" ns
		echo "  BPF run time per packet of the cgroup_skb programs (kernel stats; loopback TCP, $ROUNDS runs):"
		for ((r = 0; r < ROUNDS; r++)); do
			go test -count=1 -run '^$' -bench NetobsPacketHooks -benchtime 3000x ./internal/probe/ 2>/dev/null |
				awk -v d="$TMP/hook" '/^Benchmark/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^ns\/(net|dns)-/) { f = $(i + 1); sub("ns/", "", f); print $i >> (d "-" f) } }'
		done
		for h in net-egress net-ingress dns-egress dns-ingress; do
			if [[ -s $TMP/hook-$h ]]; then row "  $h (net: counters + peer; dns: port 53 check)" "$TMP/hook-$h" ns; fi
		done
	)
elif part 6; then
	echo "== 6. skipped: needs the eBPF backend, nft, nsenter and ip"
fi

# 7. what the perf events of the cgroup and the block group's
# tracepoints add: the same workload in a cgroup with nothing attached
# (A) and in one with the perf events and the block group on it (B), as
# interleaved pairs. The cgroups come from the probe package's test
# binary (host helper "attach"), so that nothing else of statexec runs.
# Workloads: perf bench sched pipe pinned to one CPU (context switches:
# cgroup perf events cost at each switch), and an O_DIRECT read loop of
# 4 KiB blocks from a file on a real disk (dd iflag=direct: one request
# per read). Knobs: DIRECT_READS, DIRECT_DIR (not tmpfs).
if part 7 && [[ $(id -u) -eq 0 ]] && have perf; then
	DIRECT_READS=${DIRECT_READS:-8192}
	DIRECT_DIR=${DIRECT_DIR:-/var/tmp}
	ROUNDS7=${ROUNDS7:-$((ROUNDS * 3))}
	echo "== 7. perf events + block tracepoints on the cgroup vs a bare cgroup ($ROUNDS7 rounds of bare, on, bare)"
	go test -c -o "$TMP/probe.test" ./internal/probe
	dfile=$(mktemp "$DIRECT_DIR/statexec-bench-direct.XXXXXX")
	trap 'rm -f "$dfile"; cleanup' EXIT
	dd if=/dev/urandom of="$dfile" bs=1M count=$((DIRECT_READS * 4 / 1024 + 1)) conv=fsync status=none
	# in_cgroup ATTACH CMD...: runs CMD in a fresh cgroup, with (1) or
	# without (0) the perf events and the block group; prints its stdout.
	in_cgroup() {
		local attach=$1 cgfile=$TMP/cg.path i cg
		shift
		rm -f "$cgfile"
		exec 7> >(STATEXEC_HOST_HELPER=attach HELPER_ATTACH=$attach HELPER_FILE=$cgfile "$TMP/probe.test")
		for ((i = 0; i < 100; i++)); do [[ -s $cgfile ]] && break; sleep 0.1; done
		cg=$(cat "$cgfile")
		sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"
		exec 7>&- # the helper removes its cgroup
	}
	pipe6() { in_cgroup "$1" taskset -c "$PIN_CPU" perf bench sched pipe -l "$PIPE_LOOPS" 2>/dev/null | awk '/usecs\/op/ { print $1 }'; }
	direct6() { in_cgroup "$1" dd if="$dfile" of=/dev/null iflag=direct bs=4k count="$DIRECT_READS" 2>&1 | awk '/copied/ { print $(NF-3) }'; }
	# A 1% effect is below the spread of 3 pairs here: this part runs
	# ROUNDS7 rounds of A B A', and A'/A (bare against bare) shows the
	# noise the B/A ratio has to stand out of.
	for w in pipe6 direct6; do
		: >"$TMP/$w-0" && : >"$TMP/$w-1" && : >"$TMP/$w-ratio" && : >"$TMP/$w-control"
		for ((r = 0; r < ROUNDS7; r++)); do
			a=$("$w" 0) b=$("$w" 1) c=$("$w" 0)
			echo "$a" >>"$TMP/$w-0" && echo "$b" >>"$TMP/$w-1"
			# B against the mean of the A on either side of it.
			div "$b" "$(awk -v a="$a" -v c="$c" 'BEGIN { print (a + c) / 2 }')" >>"$TMP/$w-ratio"
			div "$c" "$a" >>"$TMP/$w-control"
		done
	done
	row "sched pipe, bare cgroup" "$TMP/pipe6-0" usecs/op
	row "sched pipe, perf+block on" "$TMP/pipe6-1" usecs/op
	row "  slowdown, per round (B / mean of A, A')" "$TMP/pipe6-ratio" x
	row "  control, bare / bare (A' / A)" "$TMP/pipe6-control" x
	target "perf+block, sched pipe slowdown (issue 10)" "$TMP/pipe6-ratio" 1.01 x
	row "O_DIRECT ${DIRECT_READS}x4KiB, bare cgroup" "$TMP/direct6-0" s
	row "O_DIRECT, perf+block on" "$TMP/direct6-1" s
	row "  slowdown, per round (B / mean of A, A')" "$TMP/direct6-ratio" x
	row "  control, bare / bare (A' / A)" "$TMP/direct6-control" x
	target "perf+block, O_DIRECT slowdown (issue 10)" "$TMP/direct6-ratio" 1.01 x
elif part 7; then
	echo "== 7. skipped: needs root and perf"
fi

echo "== targets of issues 8 and 10 (median of the pairs, spread; PASS when the median is within the limit)"
for line in "${TARGETS[@]}"; do echo "  $line"; done
