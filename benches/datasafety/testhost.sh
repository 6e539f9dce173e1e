#!/bin/sh
# Runs inside herd's emulated test host (busybox sh; see run.sh).
#   testhost.sh kill N   N episodes: boot the writer, let it write for a
#                        random 0-4 s after its first ack, kill -9 herd;
#                        then one boot that only checks, and a clean stop
#   testhost.sh write    one writer boot in the foreground, its console on
#                        stdout, until the test host itself is killed
export HERD_HOME=/store
args="--root redis:1 --disk /emu/ds.img --mem 256 --log-level error --no-rng"
writer() { echo "quiet herd.run=\"sh /etc/herd-writer.sh $1\""; }
last() { tr -d '\r' <"$2" | grep -o "ds: $1 [0-9]*" | tail -n 1 | awk '{ print $NF }'; }
checks() { tr -d '\r' <"$1" | grep '^ds: \(check\|error\)'; }

case $1 in
kill)
	i=0
	failed=0
	while [ "$i" -lt "$2" ]; do
		i=$((i + 1))
		out=/tmp/episode$i.out
		herd run $args --cmdline "$(writer write)" </dev/null >"$out" 2>&1 &
		pid=$!
		n=0
		until grep -q 'ds: ack file' "$out"; do
			n=$((n + 1))
			if [ $n -gt 1800 ] || ! kill -0 $pid 2>/dev/null; then
				# A guest that died in early boot (the test host's known
				# triple faults, issue 14) wrote nothing: not a data-safety
				# result. The next boot still checks the previous crash.
				kill -9 $pid 2>/dev/null
				wait $pid 2>/dev/null
				echo "ds-bootfail episode=$i: $(tr -d '\r' <"$out" | grep -E 'herd: error|triple|panic' | tail -n 1)"
				failed=$((failed + 1))
				[ "$failed" -gt 3 ] && { echo "ds-error: too many failed boots"; tail -n 30 "$out"; exit 1; }
				i=$((i - 1))
				continue 2
			fi
			sleep 0.1
		done
		sleep "$(awk -v s="$i$$" 'BEGIN { srand(s); printf "%.2f", rand() * 4 }')"
		kill -9 $pid
		wait $pid 2>/dev/null
		checks "$out"
		echo "ds-episode kind=herd-kill file=$(last 'ack file' "$out") redis=$(last 'ack redis' "$out") unsynced=$(last 'wrote unsynced' "$out")"
	done
	herd run $args --cmdline "$(writer check)" </dev/null >/tmp/final.out 2>&1
	echo "ds-final herd-exit=$?"
	checks /tmp/final.out
	;;
write)
	exec herd run $args --cmdline "$(writer write)" </dev/null 2>&1
	;;
*)
	echo "usage: testhost.sh kill N | write" >&2
	exit 2
	;;
esac
