//! Seeded runs: a few hundred seeds with every fault keep every guarantee; a seed replays bit
//! for bit; and each re-introduced class of bug is found within a bounded number of seeds.

use sim::{run_seed, Bugs, StoreBugs};

/// Seeds the suite runs on every CI run (the documented longer run: `cargo run --release -p sim
/// -- --seeds 10000`).
const CI_SEEDS: u64 = 300;

/// The most seeds a re-introduced bug may take to be found.
const BUG_SEEDS_MAX: u64 = 300;

#[test]
fn a_few_hundred_seeds_keep_every_guarantee() {
    let (mut sagas, mut requests) = (0, 0);
    for seed in 1..=CI_SEEDS {
        let report = run_seed(seed, Bugs::default()).expect("the run starts");
        assert!(report.passed(), "seed {seed} broke a guarantee:\n{}", report.explain());
        sagas += report.sagas;
        requests += report.participant_requests;
    }
    // The runs did something: sagas ran and participants were called.
    assert!(sagas > CI_SEEDS as usize * 5, "only {sagas} sagas in {CI_SEEDS} seeds");
    assert!(requests > sagas, "only {requests} participant requests for {sagas} sagas");
}

#[test]
fn a_seed_replays_bit_for_bit() {
    // Seeds with crashes, pauses, restarts, async callbacks and cancels (among the ones that
    // found bugs before their fixes).
    for seed in [17, 22, 32, 317, 1110, 2797] {
        let first = run_seed(seed, Bugs::default()).expect("the run starts");
        let second = run_seed(seed, Bugs::default()).expect("the run starts");
        assert_eq!(first.journal_entries, second.journal_entries, "seed {seed}");
        assert!(first.trace == second.trace, "seed {seed} ran differently the second time");
        assert!(first.trace.lines().count() > 20, "seed {seed}: the trace shows the run");
    }
}

/// The first seed from 1 on whose run breaks `guarantee` with `bugs`.
fn first_seed_breaking(bugs: Bugs, guarantee: &str) -> Option<u64> {
    (1..=BUG_SEEDS_MAX).find(|seed| {
        let report = run_seed(*seed, bugs).expect("the run starts");
        report.violations.iter().any(|v| v.guarantee == guarantee)
    })
}

#[test]
fn the_checker_finds_a_commit_without_the_fencing_check() {
    let bugs = Bugs { store: StoreBugs { unfenced_commits: true, ..StoreBugs::default() }, ..Bugs::default() };
    let seed = first_seed_breaking(bugs, "no zombie commit");
    assert!(seed.is_some(), "no zombie commit found in {BUG_SEEDS_MAX} seeds");
    println!("a commit without the fencing check: found by seed {seed:?}");
}

#[test]
fn the_checker_finds_a_lease_not_released() {
    let bugs = Bugs { store: StoreBugs { leases_kept: true, ..StoreBugs::default() }, ..Bugs::default() };
    let seed = first_seed_breaking(bugs, "leases handed back");
    assert!(seed.is_some(), "no kept lease found in {BUG_SEEDS_MAX} seeds");
    println!("a lease not released: found by seed {seed:?}");
}

#[test]
fn the_checker_finds_a_compensation_skipped_for_an_ambiguous_failure() {
    let bugs = Bugs { skip_ambiguous_compensation: true, ..Bugs::default() };
    let seed = first_seed_breaking(bugs, "compensation covers exactly what happened");
    assert!(seed.is_some(), "no uncompensated ambiguous step found in {BUG_SEEDS_MAX} seeds");
    println!("a compensation skipped for an ambiguous failure: found by seed {seed:?}");
}

#[test]
fn without_the_bugs_the_same_seeds_pass() {
    // The seeds above break guarantees only because of the bug switches: the switches are off
    // again after a run, and the store's are per run.
    let bugs = Bugs { skip_ambiguous_compensation: true, ..Bugs::default() };
    let _ = run_seed(5, bugs).expect("the run starts");
    let report = run_seed(5, Bugs::default()).expect("the run starts");
    assert!(report.passed(), "{}", report.explain());
}
