#!/usr/bin/env bash
# Data safety, measured: what survives a crash of herd or of the whole host.
#
#   benches/datasafety/run.sh [HERD_KILLS] [HOST_KILLS]     (default 50 and 5)
#
# In herd's emulated test host, a writer appliance (the redis example image;
# its data disk sets `appendfsync always` and holds benches/datasafety/
# writer.sh) appends to an fsync'd counter file, to a file it never
# fsyncs, and INCRs a redis key, acknowledging each durable write on its
# console. Two kinds of crash:
#   herd-kill  kill -9 of herd inside the test host at a random moment
#              (0-4 s after the first acknowledgement); the test host and
#              its page cache live on
#   host-kill  kill -9 of QEMU from outside: the whole test host loses
#              power, page cache included; the disk image is the file on
#              this machine (QEMU's default writeback cache: what QEMU
#              wrote survives, what the test host only cached does not)
# After each crash the writer boots again and reports what it finds. A
# write acknowledged before the crash must be there; ext4 must come back
# clean after its journal replay. Prints the table (the README's "Data
# safety") and appends it to benches/RESULTS.md. The shared test-host lock
# (/tmp/herd-testhost.lock) is held for one batch (HERD_DS_BATCH herd kills,
# default 10) plus one power cut at a time: a few minutes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
kills=${1:-50}
host_kills=${2:-5}
batch=${HERD_DS_BATCH:-10}
lock=/tmp/herd-testhost.lock
herd=${HERD_BIN:-$repo/target/debug/herd}
if [ ! -x "$herd" ]; then
	(cd "$repo" && cargo build --quiet)
fi
work=$(mktemp -d /tmp/herd-datasafety.XXXXXX)
events=$work/events.log
echo "datasafety: working in $work" >&2

# HERD_DS_STORE: an image store to reuse (the redis image is built once).
export HERD_HOME=${HERD_DS_STORE:-$work/store}
"$herd" image build "$repo/guest-images/images/redis.toml" >&2
img=$HERD_HOME/images/redis/1
kernel=$(sed -n 's/.*"kernel": *"\([^"]*\)".*/\1/p' "$img/manifest.json" | head -n 1)
mkdir -p "$work/disk/config/etc/redis"
sed 's/^appendfsync .*/appendfsync always/' \
	"$repo/guest-images/images/redis/etc/redis/redis.conf" >"$work/disk/config/etc/redis/redis.conf"
grep -q '^appendfsync always$' "$work/disk/config/etc/redis/redis.conf" ||
	{ echo "datasafety: could not set appendfsync always" >&2; exit 1; }
cp "$here/writer.sh" "$work/disk/config/etc/herd-writer.sh"
"$herd" disk create --from "$work/disk" --size 256M "$work/ds.img" >&2

testhost=(
	"$herd" emulated-host --log-level warn --timeout 900
	--file "$img/image.erofs:/store/images/redis/1/image.erofs"
	--file "$img/manifest.json:/store/images/redis/1/manifest.json"
	--file "$HERD_HOME/kernels/$kernel/vmlinux:/store/kernels/$kernel/vmlinux"
	--drive "$work/ds.img"
	-- "$here/testhost.sh"
)

# herd_kills N: one locked test-host run of N herd-kill episodes.
herd_kills() {
	local out=$work/run$((++runs)).out
	echo "datasafety: test host: $1 herd kills" >&2
	"${testhost[@]}" kill "$1" >"$out" 2>&1 ||
		{ tail -n 40 "$out" >&2; echo "datasafety: test-host run failed ($out)" >&2; exit 1; }
	tr -d '\r' <"$out" | grep -E '^(ds: |ds-)' >>"$events"
}

# host_kill: the writer in a test host that is killed (QEMU, kill -9).
host_kill() {
	local out=$work/run$((++runs)).out
	echo "datasafety: test host: power cut" >&2
	"${testhost[@]}" write >"$out" 2>&1 &
	local job=$! n=0
	until grep -q 'ds: ack file' "$out"; do
		n=$((n + 1))
		if [ $n -gt 6000 ] || ! kill -0 $job 2>/dev/null; then
			tail -n 40 "$out" >&2
			echo "datasafety: the writer never wrote in the test host ($out)" >&2
			kill $job 2>/dev/null
			exit 1
		fi
		sleep 0.1
	done
	sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", rand() * 4 }')"
	pkill -9 -f "qemu-system.*$work/ds.img" || true
	wait $job 2>/dev/null || true
	local text
	text=$(tr -d '\r' <"$out")
	last() { grep -o "ds: $1 [0-9]*" <<<"$text" | tail -n 1 | awk '{ print $NF }'; }
	grep '^ds: \(check\|error\)' <<<"$text" >>"$events" || true
	echo "ds-episode kind=host-kill file=$(last 'ack file') redis=$(last 'ack redis') unsynced=$(last 'wrote unsynced')" >>"$events"
}

runs=0
started=$(date +%s)
left=$kills
hosts_left=$host_kills
exec 9>>"$lock"
while [ "$left" -gt 0 ] || [ "$hosts_left" -gt 0 ]; do
	flock 9
	n=$((left < batch ? left : batch))
	# Each run starts with a boot that checks the previous crash.
	herd_kills "$n"
	left=$((left - n))
	if [ "$hosts_left" -gt 0 ]; then
		host_kill
		hosts_left=$((hosts_left - 1))
		[ "$left" -gt 0 ] || [ "$hosts_left" -gt 0 ] || herd_kills 0
	fi
	flock -u 9
done
exec 9>&-
elapsed=$(($(date +%s) - started))

table=$(awk -v elapsed="$elapsed" '
function field(name,   i, kv) {
	for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] + 0 }
	return 0
}
/^ds-episode/ { kind = ""; for (i = 2; i <= NF; i++) if ($i ~ /^kind=/) kind = substr($i, 6)
	pf = field("file"); pr = field("redis"); pu = field("unsynced"); pending = 1; next }
/^ds: error/ { errors++ }
/^ds-bootfail/ { bootfails++ }
/^ds: check/ {
	if (!pending) next
	pending = 0; n[kind]++
	if (field("file") < pf) lostf[kind]++
	if (field("redis") < pr) lostr[kind]++
	if (field("unsynced") < pu) lostu[kind]++
	if (field("bad") > 0) bad[kind]++
	if (field("fserrors") > 0) fserr[kind]++
	if (field("replayed") > 0) replay[kind]++
	acked[kind] += pf
}
END {
	print "| crash | runs | lost an fsync'"'"'d counter write | lost a redis write (appendfsync always) | counter file damaged | ext4 errors after journal replay | journal replayed at mount | lost the last append it never synced |"
	print "|---|---:|---:|---:|---:|---:|---:|---:|"
	split("herd-kill host-kill", kinds, " ")
	name["herd-kill"] = "kill -9 of herd"; name["host-kill"] = "host power cut (QEMU killed)"
	for (k = 1; k <= 2; k++) { c = kinds[k]; if (!n[c]) continue
		printf "| %s | %d | %d | %d | %d | %d | %d | %d |\n", name[c], n[c], lostf[c], lostr[c], bad[c], fserr[c], replay[c], lostu[c] }
	printf "\n%d crashes in %d s; writer errors: %d; guests that died in early boot (test-host flake, not counted): %d\n", n["herd-kill"] + n["host-kill"], elapsed, errors, bootfails
}' "$events")

echo "$table"
{
	echo
	echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git -C "$repo" rev-parse --short HEAD)"
	echo "host: $(uname -n) — $(nproc) CPUs — kernel $(uname -r)"
	echo
	echo "Data safety (\`benches/datasafety/run.sh $kills $host_kills\`; redis example image, ext4 data disk, emulated test host)"
	echo
	echo "$table"
} >>"$repo/benches/RESULTS.md"
rm -rf "$work"
