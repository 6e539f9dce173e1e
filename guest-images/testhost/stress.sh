#!/usr/bin/env bash
# Measures how many Linux appliances the emulated test host carries at once:
# TRIES times, one `herd emulated-host` boot that starts N guests together
# (busybox base, --mem 128, herd.run="sleep 3600", no disk) and counts how
# many reach `herd-init: ready` within WAIT seconds; then says whether the
# test host's own kernel crashed or a guest triple-faulted.
#
#   guest-images/testhost/stress.sh N [TRIES] [WAIT]
#
# One result line per try on stdout:
#   stress: n=10 ready=10 secs=41 crashed=0 hostbug=0 status=0 wall=75
# and a summary line. Knobs (environment): HERD_TESTHOST_CPU, HERD_TESTHOST_DIR
# (see src/emulated_host/), STRESS_PIN (spread: guest i on test-host CPU
# i mod cpus, the default; all: every guest on every CPU), STRESS_MEM
# (test-host MiB, default 4096), STRESS_CPUS (test-host vCPUs, default 2), STRESS_LOG (keep each try's
# console there), STRESS_ARGS (more `herd run` flags, e.g. --no-rng),
# STRESS_CMDLINE (more guest kernel arguments, e.g. acpi=off). Run it under the shared lock: flock /tmp/herd-testhost.lock …
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
n=${1:?usage: stress.sh N [TRIES] [WAIT]}
tries=${2:-1}
wait_s=${3:-240}
[ -x "$repo/target/debug/herd" ] || (cd "$repo" && cargo build -q)
kernel=$(bash "$repo/guest-images/kernel/build.sh" | tail -n 1)/vmlinux
base=$(bash "$repo/guest-images/base/build.sh" | tail -n 1)/base.erofs
HERD_TESTHOST_DIR=${HERD_TESTHOST_DIR:-$(bash "$here/build.sh" | tail -n 1)}
export HERD_TESTHOST_DIR
work=$(mktemp -d /tmp/herd-stress.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A copy: a rebuild while this runs must not change the binary under test.
herd=$work/herd
cp "${HERD_BIN:-$repo/target/debug/herd}" "$herd"

cat >"$work/scenario.sh" <<'EOF'
n=$1 wait_s=$2 pin=$3 cpus=$(nproc) args=$4 cmdline=$5
# Measuring the capacity: past herd's cap on purpose.
export HERD_MAX_VMS=1000
i=1
while [ $i -le $n ]; do
	# spread: guest i on test-host CPU i mod cpus; else on every CPU.
	mask=$(printf %x $(((1 << cpus) - 1)))
	[ "$pin" = spread ] && mask=$(printf %x $((1 << (i % cpus))))
	taskset $mask herd run --kernel /emu/vmlinux --root /emu/base.erofs --mem 128 $args \
		--name g$i --cmdline "quiet herd.run=\"sleep 3600\" $cmdline" </dev/null >/tmp/g$i.out 2>&1 &
	i=$((i + 1))
done
t0=$(date +%s)
while :; do
	ready=0 gone=0 i=1
	while [ $i -le $n ]; do
		grep -q "herd-init: ready" /tmp/g$i.out && ready=$((ready + 1))
		i=$((i + 1))
	done
	secs=$(($(date +%s) - t0))
	[ $ready = $n ] || [ $secs -ge $wait_s ] && break
	sleep 1
done
crashed=$(cat /tmp/g*.out | grep -c "guest crashed" || true)
echo "stress-result: n=$n ready=$ready secs=$secs crashed=$crashed"
grep -h "guest crashed" /tmp/g*.out | head -3
EOF

ok=0
for t in $(seq 1 "$tries"); do
	log=$work/console.$t
	t0=$(date +%s)
	set +e
	timeout -s INT $((wait_s + 240)) "$herd" emulated-host --log-level debug \
		--mem "${STRESS_MEM:-4096}" --cpus "${STRESS_CPUS:-2}" \
		--file "$kernel:vmlinux" --file "$base:base.erofs" \
		-- "$work/scenario.sh" "$n" "$wait_s" "${STRESS_PIN:-spread}" \
		"${STRESS_ARGS:-}" "${STRESS_CMDLINE:-}" >"$log" 2>&1
	status=$?
	set -e
	wall=$(($(date +%s) - t0))
	res=$(grep -o 'stress-result: .*' "$log" | tail -n 1 | sed 's/stress-result: //' || true)
	[ -n "$res" ] || res="n=$n ready=? secs=? crashed=?"
	hostbug=$(grep -c 'BUG: \|Kernel panic\|stack guard' "$log" || true)
	echo "stress: $res hostbug=$hostbug status=$status wall=$wall"
	case "$res" in "n=$n ready=$n "*) [ "$hostbug" = 0 ] && ok=$((ok + 1)) ;; esac
	if [ -n "${STRESS_LOG:-}" ]; then
		mkdir -p "$STRESS_LOG" && cp "$log" "$STRESS_LOG/console.$n.$t.$(date +%s)"
	fi
done
echo "stress: summary n=$n tries=$tries all-ready=$ok qemu=$(${HERD_QEMU:-qemu-system-x86_64} --version | head -n 1 | awk '{print $4}') cpu=${HERD_TESTHOST_CPU:-default} pin=${STRESS_PIN:-spread} mem=${STRESS_MEM:-4096} cpus=${STRESS_CPUS:-2} args='${STRESS_ARGS:-}' cmdline='${STRESS_CMDLINE:-}' host=$(cat "$HERD_TESTHOST_DIR/versions" | head -n 1)"
