//! The test host's /scenario.sh (busybox sh, sourced by its /init once KVM
//! is up): links the drives by serial, runs the command in a session of its
//! own with stdout raw on ttyS1 and stderr as prefixed console lines, stops
//! it when herd asks on the control port (ttyS2: timeout, Ctrl-C,
//! SIGTERM), then stops whatever it left running (SIGTERM, which herd VMs
//! answer by stopping their guest, then SIGKILL), copies the output
//! directory to its drive and exits with the command's status.

use super::console::{REPORT_PREFIX, SETUP_FAILED_MARK, STDERR_PREFIX};

/// Where files for the command go in the test host (its working directory).
pub const EMU: &str = "/emu";
/// The script's output directory in the test host ($HERD_OUTPUT_DIR).
pub const OUTPUT_DIR: &str = "/emu/out";
/// The serial of the drive the output directory is written to (as a tar).
pub const OUTPUT_SERIAL: &str = "herd-out";
/// Seconds left-over processes get between SIGTERM and SIGKILL.
const GRACE_SECS: u32 = 3;

/// What the scenario runs and how.
pub struct Script<'a> {
    /// (drive serial, path of its symlink in the test host)
    pub links: &'a [(String, String)],
    /// The shell-quoted command line.
    pub command: &'a str,
    /// ttyS1 is also the command's stdin (an interactive console).
    pub stdin: bool,
    /// A file whose lines to print as `[report] ` lines at the end.
    pub report: Option<&'a str>,
    /// Copy OUTPUT_DIR to the drive with serial OUTPUT_SERIAL.
    pub output: bool,
    /// HERD_MAX_VMS in the test host: more herd VMs at once are refused.
    pub max_vms: u32,
}

/// Linux guests the test host carries at once per vCPU, as measured with
/// guest-images/testhost/stress.sh (see guest-images/testhost/README.md).
pub const GUESTS_PER_CPU: u32 = 5;

/// The test host's guest cap for `cpus` vCPUs.
pub fn max_vms(cpus: u32) -> u32 {
    GUESTS_PER_CPU.saturating_mul(cpus.max(1))
}

/// `word` quoted for sh.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

pub fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Script<'_> {
    pub fn render(&self) -> String {
        let setup_failed = SETUP_FAILED_MARK;
        let max_vms = self.max_vms;
        let mut s = format!(
            r#"# Written by herd (src/emulated_host/scenario.rs), sourced by the test host's /init.
export HERD_EMULATED_HOST=1 HERD_OUTPUT_DIR={OUTPUT_DIR} HERD_MAX_VMS={max_vms}
# Our own pid ($$ is /init's): `read` is a builtin, so /proc/self is us.
read -r _self _ </proc/self/stat
find_drive() {{
	for _d in /sys/block/vd*; do
		[ "$(cat "$_d/serial" 2>/dev/null)" = "$1" ] && echo "/dev/${{_d##*/}}" && return 0
	done
	echo "{setup_failed}no drive with serial $1" >/dev/console
	exit 124
}}
link_drive() {{
	_dev=$(find_drive "$1") || exit 124
	mkdir -p "${{2%/*}}" && ln -sf "$_dev" "$2"
}}
# PIDs of processes still running besides /init, us, our own helpers and the
# test host's kvm-hold (kernel threads and zombies left out).
_keep=$(cat /run/testhost-keep.pid 2>/dev/null)
leftovers() {{
	for _d in /proc/[0-9]*; do
		_p=${{_d#/proc/}} _s= _pp=
		while read -r _k _v _; do
			case $_k in State:) _s=$_v ;; PPid:) _pp=$_v && break ;; esac
		done 2>/dev/null <"$_d/status"
		case "$_p:$_s:$_pp" in 1:* | 2:* | *:Z:* | *:*:2 | *:*:0 | *:*:"$_self" | "$_self":* | "$_keep":*) ;; *) [ -n "$_pp" ] && echo "$_p" ;; esac
	done
}}
# Stops what the command left running: SIGTERM (herd stops its VM), then
# SIGKILL for anything still there after {GRACE_SECS} s.
sweep() {{
	for _sig in TERM KILL; do
		_left=$(leftovers)
		[ -n "$_left" ] || return 0
		_names=$(for _p in $_left; do cat /proc/$_p/comm 2>/dev/null; done | sort | uniq -c | awk '{{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}}')
		echo "testhost: the command left $(echo $_left | wc -w) processes running ($_names): SIG$_sig"
		kill -$_sig $_left 2>/dev/null
		_i=0
		while [ -n "$(leftovers)" ] && [ $_i -lt $(({GRACE_SECS} * 10)) ]; do
			sleep 0.1
			_i=$((_i + 1))
		done
	done
	[ -z "$(leftovers)" ] || echo "testhost: processes survived SIGKILL: $(leftovers)"
}}
mkdir -p {EMU} {OUTPUT_DIR}
"#
        );
        for (serial, dest) in self.links {
            s += &format!("link_drive {} {}\n", sh_quote(serial), sh_quote(dest));
        }
        let input = if self.stdin {
            "/dev/ttyS1"
        } else {
            "/dev/null"
        };
        s += &format!(
            r#"stty -F /dev/ttyS1 raw -echo || echo "{setup_failed}no ttyS1"
stty -F /dev/ttyS2 raw -echo || echo "{setup_failed}no ttyS2"
mkfifo /tmp/herd-stderr
sed 's/^/{STDERR_PREFIX}/' </tmp/herd-stderr &
_sed=$!
cd {EMU}
# A session of its own: stopping it reaches everything it started that
# stayed in it.
setsid {command} <{input} >/dev/ttyS1 2>/tmp/herd-stderr &
_cmd=$!
(
	read -r _why </dev/ttyS2 || exit 0
	echo "testhost: stopping the command: $_why"
	kill -TERM -$_cmd $_cmd 2>/dev/null
	sleep {GRACE_SECS}
	kill -KILL -$_cmd $_cmd 2>/dev/null
) &
_ctl=$!
wait $_cmd
_rc=$?
kill $_ctl 2>/dev/null
sweep
# The writer side of the FIFO is closed by now (sweep killed any holder).
wait $_sed
echo
"#,
            command = self.command,
        );
        if let Some(report) = self.report {
            s += &format!("[ -f {report} ] && sed 's/^/{REPORT_PREFIX}/' {report} && echo\n");
        }
        if self.output {
            s += &format!(
                "_out=$(find_drive {OUTPUT_SERIAL}) && \
                 {{ tar -cf \"$_out\" -C {OUTPUT_DIR} . && sync || \
                 echo \"testhost: copying {OUTPUT_DIR} back failed\"; }}\n"
            );
        }
        s += "exit $_rc\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_any_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(
            command_line(&["herd".into(), r#"herd.run="echo 'x'""#.into()]),
            r#"'herd' 'herd.run="echo '\''x'\''"'"#
        );
    }

    #[test]
    fn scenario_links_drives_sweeps_and_reports() {
        let links = [("herd-d0".to_owned(), "/emu/disk0/web1.img".to_owned())];
        let s = Script {
            links: &links,
            command: "'herd' 'run'",
            stdin: false,
            report: Some("/tmp/r.json"),
            output: true,
            max_vms: 10,
        }
        .render();
        assert!(s.contains("HERD_MAX_VMS=10\n"));
        assert!(s.contains("link_drive 'herd-d0' '/emu/disk0/web1.img'"));
        assert!(s.contains("setsid 'herd' 'run' </dev/null >/dev/ttyS1"));
        assert!(s.contains("sed 's/^/[report] /' /tmp/r.json"));
        assert!(s.contains("tar -cf \"$_out\" -C /emu/out ."));
        assert!(s.find("sweep\n").expect("sweep") < s.find("tar -cf").expect("tar"));
        assert!(s.ends_with("exit $_rc\n"));
    }
}
