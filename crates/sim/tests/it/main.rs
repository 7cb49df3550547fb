//! The simulator's tests: the in-memory store against the engine's conformance suite, seeded
//! runs with faults, replay, and the checker finding each re-introduced bug.

mod conformance;
mod seeds;
