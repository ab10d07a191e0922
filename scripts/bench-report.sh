#!/usr/bin/env bash
# Benchmark of `statexec report` (part of `make bench`): time, peak memory
# and page size for a ~100 MB metrics file - the series of example/'s
# file, 100 ms apart, as many ticks as it takes (about 15 minutes at
# 100 ms). Targets: < 5 s and a page < 5 MB.
#
#   scripts/bench-report.sh [SIZE_MB]     (default 100)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-100}
bin=bin/statexec
CGO_ENABLED=0 go build -o "$bin" . # as make build
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$size_mb" example/statexec_metrics.txt "$tmp/big.txt" <<'PY'
import math, sys

size_mb, example, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# Families (HELP, TYPE lines) and their series (name{labels}) with the last
# value the example has, in file order.
fams, cur = [], None
for line in open(example):
    line = line.rstrip("\n")
    if line == "# EOF":
        break
    if line.startswith("# HELP "):
        cur = {"meta": [line], "type": None, "series": {}}
        fams.append(cur)
    elif line.startswith("# TYPE "):
        cur["meta"].append(line)
        cur["type"] = line.split(" ")[3]
    else:
        key, value, _ = line.rsplit(" ", 2)
        cur["series"][key] = float(value)
bytes_per_tick = sum(sum(len(k) + 26 for k in f["series"]) for f in fams)
ticks = size_mb * 1_000_000 // bytes_per_tick
t0 = 1_704_067_200_000
start, end = ticks // 20, ticks - ticks // 20
with open(out, "w") as w:
    for f in fams:
        w.write("\n".join(f["meta"]) + "\n")
        for key, last in f["series"].items():
            name = key.split("{", 1)[0]
            lines = []
            for i in range(ticks):
                ts = t0 + 100 * i
                if name == "statexec_command_status":
                    v = 0 if i < start else (1 if i < end else 2)
                elif f["type"] in ("counter", "histogram"):
                    v = last * i / ticks  # cumulative, monotonic across le
                else:
                    v = last * (1 + 0.2 * math.sin(i / 300))
                    if name.endswith("rss_bytes") and i == ticks // 2:
                        v *= 10  # a one-sample spike the report must keep
                lines.append(f"{key} {v:.6g} {ts // 1000}.{ts % 1000:03d}")
            w.write("\n".join(lines) + "\n")
    w.write("# EOF\n")
print(f"bench-report: {ticks} ticks of {sum(len(f['series']) for f in fams)} series", file=sys.stderr)
PY

in_mb=$(( $(stat -c %s "$tmp/big.txt") / 1000000 ))
# Wall time, the child's CPU time (less sensitive to a busy machine) and
# peak RSS (KiB), without depending on GNU time.
read -r secs cpu rss_kb < <(python3 - "$bin" "$tmp/big.html" "$tmp/big.txt" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
subprocess.run([sys.argv[1], "report", "-o", sys.argv[2], sys.argv[3]], check=True, stdout=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{time.monotonic() - t:.2f} {ru.ru_utime + ru.ru_stime:.2f} {ru.ru_maxrss}")
PY
)
out_kb=$(( $(stat -c %s "$tmp/big.html") / 1024 ))
echo "bench-report: ${in_mb} MB file -> report in ${secs} s (target < 5 s; CPU ${cpu} s), page ${out_kb} KiB (target < 5120 KiB), peak RSS $((rss_kb / 1024)) MiB"
