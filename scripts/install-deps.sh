#!/usr/bin/env bash
# Installs, from Debian packages, everything the statexec build, tests and CI
# need - but only what is missing, so that a second run returns at once.
#
#   scripts/install-deps.sh           install what is missing (needs root)
#   scripts/install-deps.sh --check   only report; exit 1 if anything is missing
#
# Notes:
# - Package services (victoria-metrics, prometheus) are NOT started: the tests
#   start their own VictoriaMetrics on 127.0.0.1 with a free port
#   (internal/testenv). During the install a policy-rc.d that denies service
#   starts is put in place (unless one already exists) and removed afterwards.
# - Recommends are not installed (prometheus would pull in node-exporter and
#   its timers/services).
# - If another apt/dpkg is running (e.g. a background install), we wait for it
#   instead of fighting over the dpkg lock.
set -euo pipefail

# Commands in /usr/sbin are not in a normal user's PATH on Debian.
export PATH="${PATH}:/usr/local/sbin:/usr/sbin:/sbin"

# package => command that must exist once it is installed ("" = package only).
declare -A PKG_CMD=(
	[clang]=clang
	[llvm]=llvm-strip
	[libbpf-dev]=""
	[bpftool]=bpftool
	[victoria-metrics]=victoria-metrics
	[prometheus]=promtool
	[iperf3]=iperf3
	[linux-perf]=perf
	[iproute2]=ip
	[libcap2-bin]=setcap
	[util-linux]=setpriv
	[hyperfine]=hyperfine
	[curl]=curl
	[npm]=npm
	[openssl]=openssl
	[chromium]=chromium
	[python3]=python3
	[gcc]=gcc # go test -race needs cgo
	[sysstat]=pidstat # make bench compares statexec's per-sample cost with pidstat's
	[python3-prometheus-client]=""
	[nftables]=nft # network tests make loss and SYN drops with nft rules in their namespaces
)
# Packages whose command alone is enough (npm also comes with NodeSource's
# nodejs, which conflicts with Debian's npm package).
declare -A CMD_ENOUGH=([npm]=1)
# Stable order for messages and apt-get.
PKGS=(clang llvm libbpf-dev bpftool victoria-metrics prometheus iperf3 linux-perf
	iproute2 libcap2-bin util-linux hyperfine curl npm openssl chromium python3 gcc sysstat python3-prometheus-client nftables)

APT_WAIT_SECONDS=${APT_WAIT_SECONDS:-1200}

log() { printf 'install-deps: %s\n' "$*" >&2; }

# Prints the packages that are missing (package not installed, or its command
# not found), one per line.
missing_pkgs() {
	local p c
	declare -A status=()
	while read -r p c; do
		[ "${status[$p]:-}" = installed ] || status[$p]=$c
	done < <(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null || true)
	for p in "${PKGS[@]}"; do
		c=${PKG_CMD[$p]}
		if [ "${status[$p]:-}" != installed ]; then
			if [ -n "${CMD_ENOUGH[$p]:-}" ] && command -v "$c" >/dev/null 2>&1; then
				continue
			fi
			echo "$p"
		elif [ -n "$c" ] && ! command -v "$c" >/dev/null 2>&1; then
			echo "$p"
		fi
	done
}

# Waits (bounded) until no apt/dpkg process is running.
wait_for_apt() {
	local waited=0 procs
	while procs=$(pgrep -a -x 'apt|apt-get|aptitude|dpkg|unattended-upgr' 2>/dev/null); do
		if [ "$waited" -eq 0 ]; then
			log "another package manager is running, waiting (up to ${APT_WAIT_SECONDS}s):"
			printf '  %s\n' "$procs" >&2
			if [ -f /tmp/apt.log ]; then log "its log: /tmp/apt.log"; fi
		fi
		if [ "$waited" -ge "$APT_WAIT_SECONDS" ]; then
			log "giving up after ${APT_WAIT_SECONDS}s waiting for apt/dpkg"
			exit 1
		fi
		sleep 2
		waited=$((waited + 2))
	done
	if [ "$waited" -gt 0 ]; then
		log "apt/dpkg finished after ~${waited}s"
	fi
}

check_only=0
case "${1:-}" in
--check) check_only=1 ;;
"") ;;
-h | --help)
	sed -n '2,16p' "$0"
	exit 0
	;;
*)
	log "unknown argument: $1 (use --check or no argument)"
	exit 2
	;;
esac

mapfile -t missing < <(missing_pkgs)
if [ "${#missing[@]}" -eq 0 ]; then
	log "all dependencies present"
	exit 0
fi
if [ "$check_only" -eq 1 ]; then
	log "missing: ${missing[*]}"
	exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
	log "missing packages: ${missing[*]}"
	log "installing them needs root: run 'sudo $0' (or: sudo apt-get install -y --no-install-recommends ${missing[*]})"
	exit 1
fi

# Someone may be installing right now (maybe even these packages): wait, then
# look again.
wait_for_apt
mapfile -t missing < <(missing_pkgs)
if [ "${#missing[@]}" -eq 0 ]; then
	log "all dependencies present (installed by the other apt run)"
	exit 0
fi
log "installing: ${missing[*]}"

# Do not let package maintainer scripts start services (victoria-metrics'
# postinst runs 'invoke-rc.d victoria-metrics start' and fails the install if
# that fails, e.g. without an init system). invoke-rc.d and deb-systemd-invoke
# honour policy-rc.d exit code 101 = action forbidden.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
	if [ "$created_policy" -eq 1 ]; then
		rm -f "$POLICY"
	fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
	printf '#!/bin/sh\n# temporary, from statexec scripts/install-deps.sh\nexit 101\n' >"$POLICY"
	chmod 0755 "$POLICY"
	created_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout="$APT_WAIT_SECONDS"
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

apt-get -q -o DPkg::Lock::Timeout="$APT_WAIT_SECONDS" update
if ! apt-get install "${APT_OPTS[@]}" "${missing[@]}"; then
	# Most likely a maintainer script failed (e.g. a service start): finish
	# configuring with services still denied, then retry once.
	log "apt-get install failed; running 'dpkg --configure -a' and retrying once"
	dpkg --configure -a || true
	apt-get install "${APT_OPTS[@]}" "${missing[@]}"
fi

mapfile -t missing < <(missing_pkgs)
if [ "${#missing[@]}" -ne 0 ]; then
	log "still missing after install: ${missing[*]}"
	exit 1
fi

vm_bin=$(dpkg -L victoria-metrics | grep -E '/bin/victoria-metrics$' | head -n1 || true)
log "done; victoria-metrics: ${vm_bin:-?}, promtool: $(command -v promtool)"
