//! A short run of every target from a new seed (printed: `FUZZ_SEED=<seed>` replays it), and every
//! corpus entry — regressions included — as it is. Each target runs in a child process limited to
//! 4 GB of address space, so an input that makes a target allocate without bound is a failed
//! run, not a machine out of memory. The long runs are recorded in docs/security.md ("Fuzzing").

use std::process::Command;

#[test]
fn every_target_survives_its_corpus_and_a_short_run() {
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(fuzz::random_seed);
    let seconds = std::env::var("FUZZ_SECONDS").unwrap_or_else(|_| "3".to_string());
    let mut failures = Vec::new();
    for target in fuzz::TARGETS {
        assert!(!fuzz::corpus(target.name).is_empty(), "{} has no corpus", target.name);
        let output = Command::new("sh")
            .args(["-c", "ulimit -v 4000000; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_fuzz"))
            .args([target.name, "--seconds", &seconds, "--seed", &seed.to_string()])
            .output()
            .expect("run the fuzzer");
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let head: String = stderr.lines().take(5).collect::<Vec<_>>().join("\n");
            failures.push(format!("{} ({}):\n{stdout}{head}", target.name, output.status));
        }
    }
    assert!(failures.is_empty(), "FUZZ_SEED={seed}:\n{}", failures.join("\n"));
}
