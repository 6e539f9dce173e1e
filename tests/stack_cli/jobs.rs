//! `herd up --exit`: verdicts over many replicas, and replicas queueing
//! under a VM cap.

use crate::harness::{probe, Dir, WAIT};
use crate::support::herd_run::{kvm_present, run_with_timeout};

#[test]
fn exit_verdict_of_100_replicas_reports_the_failing_one() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("verdict");
    d.write(&format!(
        "name = \"lt\"\n[defaults]\nkernel = \"{}\"\nmem = 32\n\
         [appliances.client]\nreplicas = 100\ncmdline = \"probe.action=exit:0\"\n\
         [appliances.broken]\ncmdline = \"probe.action=exit:7\"\n",
        probe()
    ));
    let out = d.herd(&["up", "--exit", "client", "broken"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: FAILED (100 passed, 1 failed, of 101)"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("exit statuses: 0 x100, 7 x1"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("run time: p50 "), "{}", out.dump());
    assert!(
        out.stdout
            .contains("failed: broken (lt-broken): exit status 7"),
        "{}",
        out.dump()
    );
    // Its console tail: the probe's summary line with its command line.
    assert!(
        out.stdout.contains("  | probe: entry=pvh"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("probe.action=exit:7"), "{}", out.dump());
    assert!(d.running().is_empty(), "left running: {:?}", d.running());

    // Without the broken one: PASSED and status 0.
    let out = d.herd(&["up", "--exit", "client"]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: PASSED (100 passed, 0 failed, of 100)"),
        "{}",
        out.dump()
    );
}

#[test]
fn replicas_queue_under_a_vm_cap() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("cap");
    d.write(&format!(
        "name = \"cap\"\n[appliances.job]\nkernel = \"{}\"\nmem = 32\nreplicas = 12\n\
         cmdline = \"probe.action=exit:0\"\n",
        probe()
    ));
    let mut cmd = d.cmd(&["up", "--exit", "job"]);
    cmd.env("HERD_MAX_VMS", "3")
        .env("HERD_VM_SLOTS_DIR", d.path.join("slots"));
    let out = run_with_timeout(cmd, WAIT, "herd up --exit under HERD_MAX_VMS=3");
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: PASSED (12 passed, 0 failed, of 12)"),
        "{}",
        out.dump()
    );
}
