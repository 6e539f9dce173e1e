#!/usr/bin/env bash
# Reproducer for the test host's INT3 hang (kvm-hold.c): N probe VMs one
# after another inside one `herd emulated-host`, each created and destroyed
# (KVM's first-VM / last-VM static keys flip at each, unless kvm-hold keeps
# one VM open). Prints a line every 50 VMs; a hang shows as the lines
# stopping, and herd emulated-host then ends it at --timeout with the
# test-host vCPUs' RIPs (symbolize them with the test host's /proc/kallsyms).
#
#   flock /tmp/herd-testhost.lock guest-images/testhost/churn.sh [N] [TIMEOUT]
#
# CHURN_NO_HOLD=1 stops the test host's kvm-hold first (to see the hang);
# CHURN_TRACE=1 also switches the kvm_exit tracepoint on and off around each
# VM (text patching by another path, which kvm-hold does not prevent);
# CHURN_JAIL=1 jails each VM (a cgroup per VM, as herd's default does).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
n=${1:-1500}
timeout_s=${2:-600}
(cd "$repo" && cargo build -q && make -s -C guest-images/probes OUT="$repo/target/debug/probes" >/dev/null)
jail=--no-jail
[ -z "${CHURN_JAIL:-}" ] || jail=
script=$(mktemp /tmp/herd-churn.XXXXXX.sh)
trap 'rm -f "$script"' EXIT
cat >"$script" <<SCRIPT
[ -n "${CHURN_NO_HOLD:-}" ] && killall kvm-hold && echo "churn: kvm-hold stopped"
mount -t tracefs none /sys/kernel/tracing 2>/dev/null
E=/sys/kernel/tracing/events/kvm/kvm_exit/enable
i=0
while [ \$i -lt $n ]; do
	i=\$((i + 1))
	[ -n "${CHURN_TRACE:-}" ] && echo 1 >\$E
	herd run --log-level error $jail --no-rng --mem 16 --kernel /emu/probe-pvh.elf \
		--cmdline "probe.quick=1 probe.action=reset" >/dev/null 2>&1 || echo "churn: VM \$i failed"
	[ -n "${CHURN_TRACE:-}" ] && echo 0 >\$E
	case \$i in *[05]0) echo "churn: \$i VMs, uptime \$(cut -d' ' -f1 /proc/uptime)" ;; esac
done
echo "churn: all $n VMs done"
SCRIPT
exec "$repo/target/debug/herd" emulated-host --timeout "$timeout_s" \
	--file "$repo/target/debug/probes/probe-pvh.elf" -- "$script"
