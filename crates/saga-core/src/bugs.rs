//! Test-only switches that re-introduce a known class of bug, so the simulator (`crates/sim`)
//! can prove that its checker finds it. They exist only with the `sim-bugs` feature, are off
//! unless a test turns them on, and are per thread: the simulator runs a seed on one thread,
//! and a switch set there changes nothing on any other.

#[cfg(feature = "sim-bugs")]
mod switches {
    use std::cell::Cell;

    thread_local! {
        static SKIP_AMBIGUOUS_COMPENSATION: Cell<bool> = const { Cell::new(false) };
    }

    pub fn skip_ambiguous_compensation() -> bool {
        SKIP_AMBIGUOUS_COMPENSATION.with(Cell::get)
    }

    pub fn set_skip_ambiguous_compensation(on: bool) -> bool {
        SKIP_AMBIGUOUS_COMPENSATION.with(|switch| switch.set(on));
        true
    }
}

#[cfg(not(feature = "sim-bugs"))]
mod switches {
    pub fn skip_ambiguous_compensation() -> bool {
        false
    }

    pub fn set_skip_ambiguous_compensation(_on: bool) -> bool {
        false
    }
}

/// The bug: a step whose failure was ambiguous is not compensated (as if it had failed
/// definitely). Always false without the `sim-bugs` feature.
#[inline]
pub fn skip_ambiguous_compensation() -> bool {
    switches::skip_ambiguous_compensation()
}

/// Turns the bug on or off for this thread; false when this build has no switches (the feature
/// is off) and nothing changed.
pub fn set_skip_ambiguous_compensation(on: bool) -> bool {
    switches::set_skip_ambiguous_compensation(on)
}
