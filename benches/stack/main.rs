//! `cargo bench --bench stack`: what `herd up` costs, with probe guests on
//! the local /dev/kvm (no network: probes need none). Rows: a 5-appliance
//! stack from `up` to all healthy (two dependency levels, console health
//! checks), a second `up` that changes nothing, `down`, and 100 replicas
//! from `up --exit` to the verdict. Prints median / min / max and appends
//! the table to benches/RESULTS.md.

#[path = "../../tests/support/probes.rs"]
mod probes;
#[path = "../results.rs"]
mod results;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn runs() -> usize {
    std::env::var("HERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn herd(dir: &Path, args: &[&str]) -> f64 {
    let t0 = Instant::now();
    let out = Command::new(probes::herd_bin())
        .args(args)
        .current_dir(dir)
        .env("HERD_RUNTIME", dir.join("rt"))
        .env("HERD_HOME", dir.join("store"))
        .stdin(Stdio::null())
        .output()
        .expect("run herd");
    let took = t0.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "herd {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    if !probes::kvm_available() {
        eprintln!("SKIP: /dev/kvm absent or unusable — the stack bench did not run");
        return;
    }
    let probe = probes::probe_path("probe-pvh.elf");
    let dir =
        Scratch(std::env::temp_dir().join(format!("herd-bench-stack-{}", std::process::id())));
    std::fs::create_dir_all(dir.0.join("rt")).expect("scratch dir");
    let five = dir.0.join("five.toml");
    std::fs::write(
        &five,
        format!(
            "name = \"b5\"\n[defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
             health = {{ console = \"probe: kbd listening\", interval = 0.05 }}\n\
             [appliances.db]\n[appliances.cache]\n[appliances.web]\nreplicas = 3\n\
             depends_on = [\"db\", \"cache\"]\n",
            probe.display()
        ),
    )
    .expect("stack file");
    let hundred = dir.0.join("hundred.toml");
    std::fs::write(
        &hundred,
        format!(
            "name = \"b100\"\n[defaults]\nkernel = \"{}\"\nmem = 32\n\
             [appliances.client]\nreplicas = 100\ncmdline = \"probe.action=exit:0\"\n",
            probe.display()
        ),
    )
    .expect("stack file");
    let five = five.to_string_lossy().into_owned();
    let hundred = hundred.to_string_lossy().into_owned();
    let (mut up, mut again, mut down, mut verdict) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs() {
        up.push(herd(&dir.0, &["up", "-d", "-f", &five]));
        again.push(herd(&dir.0, &["up", "-d", "-f", &five]));
        down.push(herd(&dir.0, &["down", "-f", &five]));
        verdict.push(herd(&dir.0, &["up", "--exit", "-f", &hundred, "client"]));
    }
    let mut table = String::from(
        "| stack (probe guests, local KVM) | median | min | max |\n|---|---|---|---|\n",
    );
    for (name, samples) in [
        (
            "`herd up -d`, 5 appliances in 2 levels, to all healthy",
            &up,
        ),
        ("`herd up -d` again, nothing changed", &again),
        ("`herd down`, 5 appliances (graceful stop)", &down),
        ("`herd up --exit`, 100 replicas, to the verdict", &verdict),
    ] {
        let Some((m, lo, hi)) = results::median_min_max(samples) else {
            continue;
        };
        table += &format!("| {name} | {m:.2} s | {lo:.2} s | {hi:.2} s |\n");
    }
    table += &format!("\n{} runs each.\n", runs());
    print!("{table}");
    match results::append_results(&table) {
        Ok(p) => println!("appended to {}", p.display()),
        Err(e) => eprintln!("{e}"),
    }
}
