//! A short run of every target from a new seed (printed: `FUZZ_SEED=<seed>` replays it), and every
//! corpus entry — regressions included — as it is. The long runs are recorded in
//! docs/security.md ("Fuzzing").

use std::time::Duration;

#[test]
fn every_target_survives_its_corpus_and_a_short_run() {
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(fuzz::random_seed);
    let seconds = std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let mut findings = Vec::new();
    for target in fuzz::TARGETS {
        assert!(!fuzz::corpus(target.name).is_empty(), "{} has no corpus", target.name);
        let report = fuzz::fuzz(target, seed, Duration::from_secs(seconds));
        println!(
            "{}: seed {seed}, {} executions in {:.1} s, slowest {:?}",
            target.name,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.slowest
        );
        for finding in report.findings {
            findings.push(format!(
                "{}: {} on {:?}",
                target.name,
                finding.what,
                String::from_utf8_lossy(&finding.input)
            ));
        }
    }
    assert!(findings.is_empty(), "FUZZ_SEED={seed} found:\n{}", findings.join("\n"));
}
