//! The CI fuzz run: builds the instrumented targets and runs each under
//! libFuzzer for `HERD_FUZZ_SECONDS` (default 10) starting from the
//! checked-in corpus. Any crash, hang (10 s per input) or memory blow-up
//! (2 GiB) fails the test and leaves the input in target/fuzz/artifacts/.
//! Longer runs: `tests/fuzz/fuzz.sh run TARGET SECONDS` (see the README).

use std::path::Path;
use std::process::Command;

#[test]
fn every_target_survives_a_short_fuzz_run() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz.sh");
    let status = Command::new(&script)
        .arg("smoke")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} smoke: {status}", script.display());
}
