//! Fuzzing the inputs that come from outside, on stable Rust: the targets (one function each,
//! bytes in, a panic or a broken invariant out), a mutation fuzzer (corpus entries mutated and
//! spliced, each run from a seed so that it replays), and the corpus in `corpus/<target>/`.
//!
//! There is no coverage feedback (that needs a nightly compiler or an instrumenting toolchain
//! this machine does not have); the corpus and each target's dictionary carry the structure a
//! blind mutator would not find. A run is bounded: inputs of at most [`INPUT_MAX`] bytes, a
//! time budget, and every input timed — one slower than [`SLOW_INPUT`] is reported as a hang,
//! since each target's own work is bounded by a documented limit (template fuel, body caps).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The longest input a target is given.
pub const INPUT_MAX: usize = 64 * 1024;
/// An input slower than this is a hang.
pub const SLOW_INPUT: Duration = Duration::from_secs(2);

/// One fuzz target.
pub struct Target {
    pub name: &'static str,
    /// Runs one input; panics on a crash or a broken invariant.
    pub run: fn(&[u8]),
    /// Fragments the mutator inserts: the syntax a blind byte flip would rarely make.
    pub dictionary: &'static [&'static str],
}

pub mod targets;

pub use targets::TARGETS;

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The corpus folder of a target, in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// The corpus of a target: every file in its folder, in name order.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    entries.sort();
    entries.into_iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// An input that crashed, broke an invariant or hung.
#[derive(Debug)]
pub struct Finding {
    pub input: Vec<u8>,
    pub what: String,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub seed: u64,
    pub executions: u64,
    pub elapsed: Duration,
    pub slowest: Duration,
    pub findings: Vec<Finding>,
}

/// Runs one input, catching a panic; `Err` says what went wrong. An input slower than
/// [`SLOW_INPUT`] is run once more and is a hang only if it is slow again: on a busy machine a
/// process can be held off the CPU for seconds (seen: a 78-byte answer that takes 50 µs
/// reported at 6 s while the test suite ran beside the fuzzer).
pub fn run_one(target: &Target, input: &[u8]) -> Result<Duration, String> {
    match run_timed(target, input) {
        Ok(took) if took > SLOW_INPUT => match run_timed(target, input) {
            Ok(again) if again > SLOW_INPUT => Err(format!("took {took:?} and {again:?}, more than {SLOW_INPUT:?}")),
            other => other,
        },
        other => other,
    }
}

fn run_timed(target: &Target, input: &[u8]) -> Result<Duration, String> {
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(input)));
    let took = started.elapsed();
    match outcome {
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            Err(format!("panicked: {message}"))
        }
        Ok(()) => Ok(took),
    }
}

/// Fuzzes `target` from `seed` for `budget`: first every corpus entry as it is, then mutations.
/// Panics are caught (and their default message silenced) for the run's length.
pub fn fuzz(target: &'static Target, seed: u64, budget: Duration) -> Report {
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut pool = corpus(target.name);
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let started = Instant::now();
    let mut report = Report {
        target: target.name,
        seed,
        executions: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        findings: Vec::new(),
    };
    // FUZZ_SAVE_CURRENT=<file>: each input is written there before it runs, so an input that
    // takes the process down (out of memory, a stack overflow) can be found (slow: for replays).
    let save_current = std::env::var_os("FUZZ_SAVE_CURRENT");
    let record = |input: Vec<u8>, report: &mut Report| {
        if let Some(path) = &save_current {
            let _ = std::fs::write(path, &input);
        }
        report.executions += 1;
        match run_one(target, &input) {
            Ok(took) => report.slowest = report.slowest.max(took),
            Err(what) if report.findings.len() < 20 => report.findings.push(Finding { input, what }),
            Err(_) => {}
        }
    };
    for entry in pool.clone() {
        record(entry, &mut report);
    }
    while started.elapsed() < budget {
        let input = mutate(&pool, target.dictionary, &mut rng);
        record(input, &mut report);
    }
    report.elapsed = started.elapsed();
    std::panic::set_hook(previous_hook);
    report
}

/// One new input: a corpus entry (or two spliced) with one to eight mutations.
pub fn mutate(pool: &[Vec<u8>], dictionary: &[&str], rng: &mut SmallRng) -> Vec<u8> {
    let mut input = pool[rng.random_range(0..pool.len())].clone();
    if pool.len() > 1 && rng.random_bool(0.1) {
        let other = &pool[rng.random_range(0..pool.len())];
        let cut = rng.random_range(0..=input.len());
        let from = rng.random_range(0..=other.len());
        input.truncate(cut);
        input.extend_from_slice(&other[from..]);
    }
    for _ in 0..rng.random_range(1..=8) {
        let at = rng.random_range(0..=input.len());
        match rng.random_range(0..8) {
            0 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !input.is_empty() => {
                let i = at.min(input.len() - 1);
                input[i] = *[0u8, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'\n', b'-', b'_', b'.']
                    .get(rng.random_range(0..12))
                    .unwrap_or(&0);
            }
            2 => input.insert(at, rng.random()),
            3 if !input.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 if !input.is_empty() => {
                // Repeat a slice: deep nesting, long runs.
                let start = rng.random_range(0..input.len());
                let end = (start + rng.random_range(1..=32)).min(input.len());
                let chunk = input[start..end].to_vec();
                for _ in 0..rng.random_range(1..=64) {
                    input.splice(at..at, chunk.iter().copied());
                    if input.len() > INPUT_MAX {
                        break;
                    }
                }
            }
            _ if !dictionary.is_empty() => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                input.splice(at..at, token.bytes());
            }
            _ => input.insert(at, rng.random_range(0x20..0x7f)),
        }
    }
    input.truncate(INPUT_MAX);
    input
}

/// A seed from the clock, for runs that should start somewhere new each time.
pub fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}
