//! Test-only switches that re-introduce a known class of bug, so the simulator (`crates/sim`)
//! can prove that its checker finds it. They exist only with the `sim-bugs` feature, are off
//! unless a test turns them on, and are per thread: the simulator runs a seed on one thread,
//! and a switch set there changes nothing on any other.

/// A class of bug the engine once had (or could have), that a switch brings back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A step whose failure was ambiguous is not compensated (as if it had failed definitely).
    SkipAmbiguousCompensation,
    /// A driver that takes a saga over never counts the step its predecessor may have sent as
    /// started (`SagaState::adopt` does nothing), so a later stop skips it (seed 1007979).
    SkipAdoption,
    /// A saga's wake-up is capped by its deadline even once the deadline has passed and the
    /// saga compensates: a compensation deferred by an open circuit is due at once, again and
    /// again (seeds 504339, 2017925, 3008223).
    CapByPassedDeadline,
}

#[cfg(feature = "sim-bugs")]
mod switches {
    use std::cell::Cell;

    use super::Bug;

    thread_local! {
        static SKIP_AMBIGUOUS_COMPENSATION: Cell<bool> = const { Cell::new(false) };
        static SKIP_ADOPTION: Cell<bool> = const { Cell::new(false) };
        static CAP_BY_PASSED_DEADLINE: Cell<bool> = const { Cell::new(false) };
    }

    fn with<T>(bug: Bug, f: impl FnOnce(&Cell<bool>) -> T) -> T {
        match bug {
            Bug::SkipAmbiguousCompensation => SKIP_AMBIGUOUS_COMPENSATION.with(f),
            Bug::SkipAdoption => SKIP_ADOPTION.with(f),
            Bug::CapByPassedDeadline => CAP_BY_PASSED_DEADLINE.with(f),
        }
    }

    pub fn active(bug: Bug) -> bool {
        with(bug, Cell::get)
    }

    pub fn set(bug: Bug, on: bool) -> bool {
        with(bug, |switch| switch.set(on));
        true
    }
}

#[cfg(not(feature = "sim-bugs"))]
mod switches {
    use super::Bug;

    pub fn active(_bug: Bug) -> bool {
        false
    }

    pub fn set(_bug: Bug, _on: bool) -> bool {
        false
    }
}

/// Whether `bug` is switched on for this thread. Always false without the `sim-bugs` feature.
#[inline]
pub fn active(bug: Bug) -> bool {
    switches::active(bug)
}

/// Turns `bug` on or off for this thread; false when this build has no switches (the feature
/// is off) and nothing changed.
pub fn set(bug: Bug, on: bool) -> bool {
    switches::set(bug, on)
}
