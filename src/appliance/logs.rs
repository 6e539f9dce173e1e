//! `herd logs NAME [-f] [-n N]`: the appliance's console log (the rotated
//! `.1` file first), optionally followed until the appliance stops.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use vmm::device_manager::console::RotatingLog;

use super::runtime_dir::{self, Liveness, RuntimeDirError, CONSOLE_LOG};

const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The last `lines` lines of `text` (all with None).
fn tail(text: &[u8], lines: Option<usize>) -> &[u8] {
    let Some(n) = lines else { return text };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, &b)| b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    if n == 0 {
        return &[];
    }
    &text[start..]
}

/// The console log so far, the rotated `.1` file first, and the current
/// file (open at its end) to follow.
fn read_console(path: &Path) -> (Vec<u8>, Option<File>) {
    let mut text = std::fs::read(RotatingLog::rotated_path(path)).unwrap_or_default();
    let mut file = File::open(path).ok();
    if let Some(f) = &mut file {
        let _ = f.read_to_end(&mut text);
    }
    (text, file)
}

/// NAME's whole console log (rotated part included); empty if none.
pub fn console_text(name: &str) -> Vec<u8> {
    read_console(&runtime_dir::file_of(name, CONSOLE_LOG)).0
}

pub fn logs(name: &str, follow: bool, lines: Option<usize>) -> Result<(), RuntimeDirError> {
    let entry = runtime_dir::find(name)?;
    let path = entry.file(CONSOLE_LOG);
    let (text, mut file) = read_console(&path);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(tail(&text, lines));
    let _ = out.flush();
    if !follow {
        return Ok(());
    }
    loop {
        let running = runtime_dir::find(name).is_ok_and(|e| e.liveness == Liveness::Running);
        // Rotation: the path now names a new file; finish the old one first.
        let rotated = match (&file, std::fs::metadata(&path)) {
            (Some(f), Ok(m)) => f.metadata().is_ok_and(|o| o.ino() != m.ino()),
            (None, Ok(_)) => true,
            _ => false,
        };
        if let Some(f) = &mut file {
            // Rotation copied the file to `.1` and emptied it in place.
            let emptied = f
                .stream_position()
                .is_ok_and(|pos| f.metadata().is_ok_and(|m| m.len() < pos));
            if emptied {
                let _ = f.seek(SeekFrom::Start(0));
            }
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
        if rotated {
            file = File::open(&path).ok();
            if let Some(f) = &mut file {
                let _ = f.seek(SeekFrom::Start(0));
            }
            continue;
        }
        if !running {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(1)), b"c");
        assert_eq!(tail(b"a\nb\n", Some(5)), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", Some(0)), b"");
    }

    #[test]
    fn console_text_includes_the_rotated_part() {
        let dir = std::env::temp_dir().join(format!("herd-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CONSOLE_LOG);
        assert!(read_console(&path).0.is_empty());
        std::fs::write(RotatingLog::rotated_path(&path), b"ready\n").unwrap();
        std::fs::write(&path, b"later\n").unwrap();
        let (text, file) = read_console(&path);
        assert_eq!(text, b"ready\nlater\n");
        assert!(file.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
