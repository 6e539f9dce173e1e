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
