//! `cargo run --release -p fuzz -- [TARGET|all] [--seconds N] [--seed S]`: fuzzes each target
//! for N seconds (default 60) from seed S (default: a new one, printed), prints executions, time
//! and the slowest input, and writes every finding to `crates/fuzz/findings/<target>-<n>`
//! (a finding, once fixed, belongs in `corpus/<target>/` as a regression). Exits 1 on a finding.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut which = "all".to_string();
    let mut seconds = 60u64;
    let mut seed = fuzz::random_seed();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seconds" => seconds = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(seed),
            name => which = name.to_string(),
        }
        i += if args[i].starts_with("--") { 2 } else { 1 };
    }
    let targets: Vec<&fuzz::Target> = if which == "all" {
        fuzz::TARGETS.iter().collect()
    } else {
        match fuzz::target(&which) {
            Some(target) => vec![target],
            None => {
                let names: Vec<&str> = fuzz::TARGETS.iter().map(|t| t.name).collect();
                eprintln!("no target {which:?}; targets: {}", names.join(", "));
                return ExitCode::FAILURE;
            }
        }
    };
    let mut failed = false;
    println!("seed {seed}");
    for target in targets {
        let report = fuzz::fuzz(target, seed, Duration::from_secs(seconds));
        println!(
            "{:<20} seed {:<20} {:>10} executions in {:>6.1} s ({:>8.0}/s), slowest input {:?}, {} findings",
            report.target,
            report.seed,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.executions as f64 / report.elapsed.as_secs_f64().max(0.001),
            report.slowest,
            report.findings.len()
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("findings");
        for (n, finding) in report.findings.iter().enumerate() {
            failed = true;
            println!("  finding {n}: {}", finding.what);
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join(format!("{}-{n}", report.target)), &finding.input);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
