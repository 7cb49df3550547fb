use std::time::Duration;

use super::{
    catch_up_pause, pace, Looked, Pacer, RetentionConfig, CATCH_UP_BATCH, CATCH_UP_BATCH_MIN, CATCH_UP_DUTY,
    CATCH_UP_HOLD, FULL_BATCHES_PER_HALVING, RETENTION_IDLE_MAX,
};

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

#[test]
fn catching_up_the_cleaner_is_busy_one_part_in_the_duty() {
    let busy = Duration::from_millis(10);
    let duty = busy * (CATCH_UP_DUTY - 1);
    assert_eq!(catch_up_pause(busy, 100, 0.0), duty, "nothing coming due: the duty alone");
    // 100 sagas a look, 50 coming due a second: needed 62.5/s, a look every 1.6 s; the duty's
    // pause is shorter, so it stands.
    assert_eq!(catch_up_pause(busy, 100, 50.0), duty);
    // 4,000 coming due a second: needed 5,000/s, a look every 20 ms, so a pause of 10 ms.
    assert_eq!(catch_up_pause(busy, 100, 4_000.0), Duration::from_millis(10));
    // Slower than needed even without a pause: none.
    assert_eq!(catch_up_pause(busy, 100, 1_000_000.0), Duration::ZERO);
    // A look that took long never waits more than the idle wait.
    assert_eq!(catch_up_pause(Duration::from_secs(60), 100, 0.0), RETENTION_IDLE_MAX);
}

#[test]
fn the_pacer_keeps_up_or_catches_up_by_what_the_look_found() {
    let config = RetentionConfig::new(60_000, "w");
    let mut pacer = Pacer { deleted: 100, ..Pacer::new(&config) };
    let busy = Duration::from_millis(5);
    assert_eq!(pacer.wait(&config, Looked::KeepingUp, busy), config.pause);
    for _ in 1..FULL_BATCHES_PER_HALVING {
        pacer.wait(&config, Looked::KeepingUp, busy);
    }
    assert_eq!(pacer.full_in_a_row, FULL_BATCHES_PER_HALVING);
    assert_eq!(pacer.wait(&config, Looked::CatchingUp, busy), busy * (CATCH_UP_DUTY - 1));
    assert_eq!(pacer.full_in_a_row, 0, "catching up starts the keeping-up count again");
    assert_eq!(pacer.wait(&config, Looked::Done, busy), config.idle());
}

#[test]
fn a_catching_up_batch_shrinks_while_it_holds_the_store_long_and_grows_back() {
    let config = RetentionConfig::new(60_000, "w");
    let mut pacer = Pacer::new(&config);
    assert_eq!(pacer.catch_up_batch, CATCH_UP_BATCH);
    pacer.held(CATCH_UP_HOLD * 8);
    assert_eq!(pacer.catch_up_batch, CATCH_UP_BATCH / 2);
    for _ in 0..20 {
        pacer.held(CATCH_UP_HOLD * 8);
    }
    assert_eq!(pacer.catch_up_batch, CATCH_UP_BATCH_MIN, "never below the least");
    pacer.held(CATCH_UP_HOLD * 3 / 4);
    assert_eq!(pacer.catch_up_batch, CATCH_UP_BATCH_MIN, "near the hold: kept");
    for _ in 0..20 {
        pacer.held(Duration::from_micros(100));
    }
    assert_eq!(pacer.catch_up_batch, CATCH_UP_BATCH, "never above the most");
    let small = RetentionConfig { batch: 3, ..RetentionConfig::new(60_000, "w") };
    assert_eq!(Pacer::new(&small).catch_up_batch, 3, "nor above the configured batch");
}
