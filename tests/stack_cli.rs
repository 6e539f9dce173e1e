//! `herd up/down` of stacks. Bad stack files need no VM; the rest boots
//! probe guests on the local /dev/kvm. Each test has its own stack
//! directory and HERD_RUNTIME; the network test its own network namespace.

#[path = "stack_cli/harness.rs"]
mod harness;
#[path = "stack_cli/jobs.rs"]
mod jobs;
#[path = "stack_cli/lifecycle.rs"]
mod lifecycle;
#[path = "stack_cli/net_upgrade.rs"]
mod net_upgrade;
mod support;

use std::path::Path;

use harness::{one_line_error, probe, Dir};

#[test]
fn bad_stack_files_name_file_key_and_line_and_start_nothing() {
    let d = Dir::new("bad");
    std::fs::write(d.path.join("one.img"), b"disk").unwrap();
    let k = probe();
    let net = "[network]\nname = \"hst-bad\"\nsubnet = \"10.77.0.1/24\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("[appliances.a]\nkernel = \"{k}\"\nmemory = 64\n"),
            ":3: memory: unknown field `memory`",
            "unknown key",
        ),
        (
            format!("[appliances.a]\nkernel = \"{k}\"\n[appliances.a]\nkernel = \"{k}\"\n"),
            ":3: a: duplicate key",
            "duplicate name",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\nreplicas = 2\n\n[appliances.a-2]\nkernel = \"{k}\"\n"
            ),
            ":5: a-2: duplicate name a-2",
            "duplicate replica name",
        ),
        (
            format!("{net}[appliances.a]\nkernel = \"{k}\"\naddress = \"10.78.0.5\"\n"),
            ":6: address: 10.78.0.5 is outside the subnet 10.77.0.0/24",
            "address outside the subnet",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\ndepends_on = [\"b\"]\n[appliances.b]\n\
                 kernel = \"{k}\"\ndepends_on = [\"c\"]\n[appliances.c]\nkernel = \"{k}\"\n\
                 depends_on = [\"a\"]\n"
            ),
            ":9: depends_on: dependency cycle: a -> b -> c -> a",
            "dependency cycle",
        ),
        (
            "[appliances.a]\nimage = \"redis:2\"\n".to_owned(),
            ":2: image: ",
            "image not in the store",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\ndisk = \"one.img\"\n[appliances.b]\n\
                 kernel = \"{k}\"\ndisk = \"one.img\"\n"
            ),
            ":6: disk: two appliances on one disk: a and b both use",
            "two appliances on one disk",
        ),
    ];
    for (text, want, what) in &cases {
        d.write(text);
        let out = d.herd(&["up", "-d"]);
        assert_eq!(out.code(), Some(2), "{what}: {}", out.dump());
        let line = one_line_error(&out);
        let prefix = "herd: error: herd.toml:";
        assert!(line.starts_with(prefix), "{what}: {line}");
        assert!(line.contains(want), "{what}: {line:?} lacks {want:?}");
        assert!(d.started().is_empty(), "{what}: something started");
        assert!(
            !Path::new("/sys/class/net/hst-bad").exists(),
            "{what}: bridge made"
        );
    }
    // The image error says which image and where to look.
    d.write("[appliances.a]\nimage = \"redis:2\"\n");
    let out = d.herd(&["up", "-d"]);
    assert!(one_line_error(&out).contains("redis"), "{}", out.dump());
}
