//! A termination signal that arrives after the VM (and the stop eventfd it
//! was installed with) is gone must not write into whatever file reuses
//! that descriptor number. Its own test binary: it moves descriptors
//! around by number, which would race with other tests' files.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};

use vmm_sys_util::eventfd::EventFd;

#[test]
fn a_late_sigterm_never_writes_into_a_reused_descriptor() {
    let stop = EventFd::new(0).unwrap();
    vmm::signals::install(&stop).unwrap();
    let old_number = stop.as_raw_fd();
    drop(stop);

    // The next file opened takes the freed number, as the boot report
    // written after a run does; force it in case something else took it.
    let path = std::env::temp_dir().join(format!("herd-signal-reuse-{}", std::process::id()));
    let mut reused = std::fs::File::create(&path).unwrap();
    if reused.as_raw_fd() != old_number {
        // SAFETY: dup2 only duplicates descriptors this test owns.
        let fd = unsafe { libc::dup2(reused.as_raw_fd(), old_number) };
        assert_eq!(fd, old_number);
        // SAFETY: `fd` was just created by dup2 and nothing else owns it.
        reused = unsafe { std::fs::File::from_raw_fd(fd) };
    }

    // SAFETY: raise only sends a signal to this thread; the handler is ours.
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    let mut content = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut content)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        content.is_empty(),
        "SIGTERM wrote {content:?} into the file that reused the stop eventfd's number"
    );
    let _ = reused.sync_all();

    // A new VM installing again is woken by the next signal.
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vmm::signals::install(&stop).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
    assert_eq!(
        stop.read().unwrap(),
        1,
        "the handler did not wake the new VM"
    );
    assert_eq!(vmm::signals::terminations().0, 2);
}
