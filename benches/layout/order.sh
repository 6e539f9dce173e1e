#!/usr/bin/env bash
# Writes src/link-order.txt: the functions a VM's herd process runs, which
# src/build.rs has the linker put side by side (see its comment). Run it
# after large changes to the VM path; the boot bench's memory rows show the
# effect. Needs gdb, and /dev/kvm for the probe guests.
#
# Every function of a release build gets a one-shot gdb breakpoint; the probe
# guests then take the paths a VM's process takes: boot and reset, SIGTERM on
# a running guest, two vCPUs and a boot report, console to a file, disks,
# and the jail's supervisor (gdb follows the supervisor; the jailed child runs
# the same VM code as the unjailed scenarios). Twice: `cargo build --release` and `cargo bench`
# build herd with different symbol names (the bench profile unwinds on panic,
# which changes every crate's hash), and the list holds both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
command -v gdb >/dev/null || { echo "order.sh: needs gdb (apt-get install gdb)" >&2; exit 2; }
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
herd=$target/release/herd
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
make -s -C guest-images/probes OUT="$scratch/probes"
p=$scratch/probes
raw=$scratch/ran.txt
run() { python3 benches/layout/functions_run.py "$herd" "$raw" -- run --log-level error --mem 64 "$@"; }
stdio() { run --console stdio "$@"; }
scenarios() {
  stdio --no-jail --kernel "$p/probe-linux64.elf" --cmdline "probe.quick=1 probe.action=reset"
  TERM_AFTER=3 stdio --no-jail --kernel "$p/probe-linux64.elf" --cmdline "probe.quick=1 probe.action=spin"
  stdio --no-jail --kernel "$p/probe-pvh.elf" --cmdline "probe.action=exit:0" --cpus 2 --boot-report "$scratch/report.json"
  run --no-jail --kernel "$p/probe-linux64.elf" --cmdline "probe.action=exit:3" --console "file:$scratch/console.log"
  truncate -s 64K "$scratch/root.img" "$scratch/data.img"
  stdio --no-jail --kernel "$p/probe-linux64.elf" --root "$scratch/root.img" --disk "$scratch/data.img" --cmdline "probe.action=blk"
  if [ "$(id -u)" = 0 ]; then
    stdio --kernel "$p/probe-linux64.elf" --cmdline "probe.quick=1 probe.action=reset"
  fi
}
# The bench profile's herd first, then the release one (left in place).
cargo bench -q --no-run --bench boot
scenarios
cargo build --release -q --bin herd
scenarios
# Replaced only when every scenario ran (set -e): never a partial list.
awk '!seen[$0]++' "$raw" > "$scratch/link-order.txt"
mv "$scratch/link-order.txt" src/link-order.txt
echo "order.sh: $(wc -l < src/link-order.txt) functions in src/link-order.txt"
