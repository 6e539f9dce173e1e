//! `herd run --detach`: herd starts itself again in a new session and
//! returns once that copy's VM runs, or fails with the copy's own error
//! and exit status (its stderr is ours until the VM runs).
//!
//! The copy learns where to say "running" from `HERD_READY_FD`: a pipe
//! whose other end this process reads. EOF without the word means the
//! copy failed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE, EXIT_OK};

const READY_FD_ENV: &str = "HERD_READY_FD";
const READY_WORD: &[u8] = b"running\n";

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The arguments for the detached copy: ours without `--detach`, with the
/// console going to the appliance's log.
fn child_args(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut out: Vec<OsString> = Vec::with_capacity(args.len() + 2);
    let mut console_given = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--detach" {
            continue;
        }
        let text = arg.to_string_lossy();
        let console = if text == "--console" {
            out.push(arg.clone());
            iter.next().cloned()
        } else {
            text.strip_prefix("--console=").map(OsString::from)
        };
        if let Some(value) = console {
            if value != "log" {
                return Err(format!(
                    "--detach: the console of a detached appliance goes to its log (read it with \
                     `herd logs`, type into it with `herd console`); drop --console {}",
                    value.to_string_lossy()
                ));
            }
            console_given = true;
            if text == "--console" {
                out.push(value);
            } else {
                out.push(arg.clone());
            }
            continue;
        }
        out.push(arg.clone());
    }
    if !console_given {
        out.extend(["--console".into(), "log".into()]);
    }
    Ok(out)
}

/// Starts the detached copy and waits until its VM runs. Prints NAME.
pub fn launch(name: &str) -> u8 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let args = match child_args(&args) {
        Ok(a) => a,
        Err(e) => return crate::fail(EXIT_BAD_INPUT, e),
    };
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => return crate::fail(EXIT_HOST_FAILURE, format!("cannot create a pipe: {e}")),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return crate::fail(
                EXIT_HOST_FAILURE,
                format!("cannot find herd's own binary: {e}"),
            )
        }
    };
    let ready_fd = write_end.as_raw_fd();
    let mut command = Command::new(exe);
    command
        .args(&args)
        .env(READY_FD_ENV, ready_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (setsid, fcntl).
    // SAFETY: sound for the reasons just given.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Let the write end survive exec (it was made O_CLOEXEC).
            if libc::fcntl(ready_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return crate::fail(EXIT_HOST_FAILURE, format!("cannot start herd: {e}")),
    };
    drop(write_end);
    let mut said = Vec::new();
    let _ = File::from(read_end)
        .take(READY_WORD.len() as u64)
        .read_to_end(&mut said);
    if said == READY_WORD {
        println!("{name}");
        return EXIT_OK;
    }
    match child.wait() {
        Ok(status) => status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(EXIT_HOST_FAILURE),
        Err(e) => crate::fail(EXIT_HOST_FAILURE, format!("lost the detached herd: {e}")),
    }
}

/// The detached copy's side: where to report that the VM runs.
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Takes the pipe named in the environment, if herd was started by
    /// `launch`.
    pub fn from_env() -> Option<Self> {
        let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        std::env::remove_var(READY_FD_ENV);
        // SAFETY: fcntl(F_GETFD) only checks that the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return None;
        }
        // Not inherited by anything this process starts.
        // SAFETY: as above, on a descriptor that is open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the parent made this descriptor for us alone.
        Some(ReadyPipe(unsafe { File::from_raw_fd(fd) }))
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    /// The VM runs: herd's output moves to `log` and the parent returns.
    pub fn report_running(mut self, log: &std::path::Path) {
        redirect_output(log);
        let _ = self.0.write_all(READY_WORD);
    }
}

/// Sends this process's stdout and stderr to the end of `log`.
pub fn redirect_output(log: &std::path::Path) {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(file) => {
            for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                // dup2 onto the standard descriptors, from a
                // file that stays open for the call.
                // SAFETY: sound for the reasons just given.
                unsafe { libc::dup2(file.as_raw_fd(), target) };
            }
        }
        Err(e) => log::warn!(
            "cannot open {}: {e}; herd's messages are lost",
            log.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn detach_is_dropped_and_console_goes_to_the_log() {
        let got = child_args(&strs(&["run", "--detach", "--name", "a", "--kernel", "k"])).unwrap();
        assert_eq!(
            got,
            strs(&["run", "--name", "a", "--kernel", "k", "--console", "log"])
        );
        let got = child_args(&strs(&["run", "--console=log", "--detach"])).unwrap();
        assert_eq!(got, strs(&["run", "--console=log"]));
        assert!(child_args(&strs(&["run", "--console", "stdio", "--detach"])).is_err());
    }
}
