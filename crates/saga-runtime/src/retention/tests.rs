use std::time::Duration;

use super::{pace, FULL_BATCHES_PER_HALVING};

#[test]
fn a_lasting_backlog_halves_the_pause_down_to_a_sixteenth() {
    let pause = Duration::from_millis(256);
    let check = |full_in_a_row: u32, expect_ms: u64| {
        assert_eq!(pace(pause, full_in_a_row), Duration::from_millis(expect_ms), "after {full_in_a_row} full batches");
    };
    check(1, 256);
    check(FULL_BATCHES_PER_HALVING - 1, 256);
    check(FULL_BATCHES_PER_HALVING, 128);
    check(2 * FULL_BATCHES_PER_HALVING, 64);
    check(4 * FULL_BATCHES_PER_HALVING, 16);
    check(100 * FULL_BATCHES_PER_HALVING, 16);
    check(u32::MAX, 16);
}
