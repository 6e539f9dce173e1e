#!/bin/sh
# The writer appliance (runs in the redis guest as herd.run, see run.sh).
# First it reports what survived the last crash, then (unless "check") it
# writes forever, printing an acknowledgement only after each write is
# durable from the guest's point of view:
#   /data/counter   one line per number, appended then fsync'd ("ack file N")
#   /data/unsynced  the same numbers, appended and never fsync'd ("wrote unsynced N")
#   redis key c     INCR with appendfsync always ("ack redis N")
f=/data/counter
u=/data/unsynced
last=$(tail -n 1 "$f" 2>/dev/null)
lines=$(wc -l <"$f" 2>/dev/null || echo 0)
# Lines that are not exactly their own number: holes, garbage, torn lines.
bad=$(awk '$0 != NR { b++ } END { print b + 0 }' "$f" 2>/dev/null || echo 0)
ulast=$(tail -n 1 "$u" 2>/dev/null)
n=0
until redis-cli PING 2>/dev/null | grep -q PONG; do
	n=$((n + 1))
	[ $n -gt 600 ] && echo "ds: error redis never answered" && exit 1
	sleep 0.1
done
r=$(redis-cli GET c)
errors=$(dmesg | grep -c 'EXT4-fs error')
replayed=$(dmesg | grep -c 'recovery complete')
echo "ds: check file=${last:-0} lines=$lines bad=$bad unsynced=${ulast:-0} redis=${r:-0} fserrors=$errors replayed=$replayed"
[ "$1" = check ] && exit 0
i=${last:-0}
while :; do
	i=$((i + 1))
	echo "$i" >>"$f" && sync "$f" && echo "ds: ack file $i"
	echo "$i" >>"$u" && echo "ds: wrote unsynced $i"
	v=$(redis-cli INCR c) && echo "ds: ack redis $v"
done
