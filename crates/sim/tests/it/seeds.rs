//! Seeded runs: a few hundred seeds with every fault pass the checker; a seed replays exactly;
//! and each re-introduced bug is found within a bounded number of seeds.

use sim::{run_seed, Bugs, StoreBugs};

#[test]
fn placeholder() {
    let report = run_seed(1, Bugs::default()).expect("run");
    assert!(report.passed(), "{}", report.explain());
    let _ = StoreBugs::default();
}
