# Shell helpers sourced by the test host before /scenario.sh (busybox ash).

# guest ARGS...: run `herd ARGS...`, every output line prefixed "[guest] ",
# and return herd's own exit status. ash has no PIPESTATUS, so the status
# travels through a file written inside the left side of the pipe.
# HERD_TIMEOUT (seconds, default 60) bounds one herd run: herd gets SIGTERM
# and the line "testhost: guest timed out" is printed, since herd's status
# alone (whatever herd does on SIGTERM) cannot tell a timeout apart.
guest() {
	_rcf=$(mktemp /tmp/guest-rc.XXXXXX)
	_t0=$(date +%s)
	{
		timeout -s TERM "${HERD_TIMEOUT:-60}" herd "$@" 2>&1
		echo $? >"$_rcf"
	} | sed 's/^/[guest] /'
	_rc=$(cat "$_rcf")
	rm -f "$_rcf"
	if [ $(($(date +%s) - _t0)) -ge "${HERD_TIMEOUT:-60}" ]; then
		echo "testhost: guest timed out after ${HERD_TIMEOUT:-60} s"
	fi
	return "${_rc:-255}"
}

# run_guest NAME ARGS...: like guest, framed by marker lines that the Rust
# harness splits into named runs (ScenarioResult::run(NAME)).
run_guest() {
	_name=$1
	shift
	echo "testhost: begin $_name uptime=$(cut -d' ' -f1 /proc/uptime)"
	guest "$@"
	_grc=$?
	echo "testhost: end $_name exit=$_grc uptime=$(cut -d' ' -f1 /proc/uptime)"
	return $_grc
}

# Background guests, for scenarios that watch a guest while it runs.
# `bg_guest NAME OUT CMD…` is `run_guest` for a guest in the background:
# herd's output goes straight to the file OUT (run_guest's `sed` prefixing
# would hold it in its buffer, so the scenario could not watch it), and
# `show NAME OUT` later prints it exactly as run_guest would have.
# A bg_guest's herd runs pinned to test-host CPU $CPU (default 0): under
# the emulated test host (QEMU TCG's nested SVM) guests then failed less
# often (testhost/README.md). Other herds run on any CPU.
up() { cut -d' ' -f1 /proc/uptime; }
# wait_for FILE TEXT SECONDS: until FILE (a bg_guest's output) has TEXT;
# fails after SECONDS or once that guest's herd has exited without it
wait_for() {
	_t0=$(date +%s)
	while ! grep -q "$2" "$1" 2>/dev/null; do
		[ -e "$1.end" ] && ! grep -q "$2" "$1" && return 1
		[ $(($(date +%s) - _t0)) -ge "$3" ] && return 1
		sleep 0.5
	done
}
# herd_pids TEXT: PIDs of running `herd run` processes whose command line has
# TEXT, one per appliance: a jailed appliance's VM process (forked by herd, so
# with the same command line; pid 1 of its own PID namespace) is left out
herd_pids() {
	for _p in /proc/[0-9]*; do
		_c=$({ tr '\0' ' ' <"$_p/cmdline"; } 2>/dev/null)
		case "$_c" in "herd run "*"$1"*)
			grep -qE '^NSpid:.*[[:space:]]1$' "$_p/status" 2>/dev/null || echo "${_p#/proc/}" ;;
		esac
	done
}
# herd_vm PID: the jailed VM process that herd PID supervises
herd_vm() {
	grep -lE "^PPid:[[:space:]]+$1\$" /proc/[0-9]*/status 2>/dev/null | head -n 1 | cut -d/ -f3
}
bg_guest() {
	_name=$1 _out=$2
	shift 2
	up >"$_out.begin"
	_t0=$(date +%s)
	timeout -s TERM "$HERD_TIMEOUT" taskset -c "${CPU:-0}" "$@" >"$_out" 2>&1
	_rc=$?
	[ $(($(date +%s) - _t0)) -ge "$HERD_TIMEOUT" ] && : >"$_out.timedout"
	echo "$_rc $(up)" >"$_out.end"
}
show() {
	echo "testhost: begin $1 uptime=$(cat "$2.begin")"
	sed 's/^/[guest] /' "$2"
	[ -e "$2.timedout" ] && echo "testhost: guest timed out after $HERD_TIMEOUT s"
	read -r _rc _up <"$2.end"
	echo "testhost: end $1 exit=$_rc uptime=$_up"
}
# release FIFO: a line on that guest's console (opened read-write: never blocks)
release() { echo go 1<>"$1"; }
