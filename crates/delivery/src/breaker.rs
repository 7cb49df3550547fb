//! A breaker per destination (subscription), per process: after `failures_to_open` failed
//! attempts in a row its deliveries are left unclaimed for `cool_down`, then one probe attempt
//! decides — a success closes it, a failure opens it again. A destination that is down costs one
//! attempt per cool-down instead of one per due delivery, and its deliveries keep their place
//! in the schedule (a skipped delivery spends no attempt).

use std::collections::BTreeMap;

use uuid::Uuid;

/// What an attempt's outcome did to its destination's breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerChange {
    Opened,
    Closed,
    None,
}

/// The breakers of one dispatcher.
#[derive(Debug, Default)]
pub struct Breakers {
    by_subscription: BTreeMap<Uuid, Breaker>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures_in_a_row: u32,
    /// Until when (ms, on the dispatcher's clock) it holds its destination.
    open_until: Option<i64>,
    probing: bool,
}

impl Breakers {
    /// Whether an attempt for `subscription` may start now; a half-open breaker allows one.
    pub fn allows(&mut self, subscription: Uuid, now: i64) -> bool {
        let Some(breaker) = self.by_subscription.get_mut(&subscription) else { return true };
        match breaker.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if breaker.probing => false,
            Some(_) => {
                breaker.probing = true;
                true
            }
        }
    }

    /// Subscriptions whose deliveries should not be claimed now (open, or probing).
    pub fn holding(&self, now: i64) -> Vec<Uuid> {
        self.by_subscription
            .iter()
            .filter(|(_, b)| b.open_until.is_some_and(|until| now < until || b.probing))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A probe that never reached the destination (an expired event, a denied address) decides
    /// nothing: the breaker stays as it was, and the next attempt may probe. (Left probing, it
    /// held the destination's deliveries for as long as the process lived.)
    pub fn probe_undecided(&mut self, subscription: Uuid) {
        if let Some(breaker) = self.by_subscription.get_mut(&subscription) {
            breaker.probing = false;
        }
    }

    /// Records an attempt's outcome.
    pub fn record(
        &mut self,
        subscription: Uuid,
        delivered: bool,
        (failures_to_open, cool_down_ms): (u32, i64),
        now: i64,
    ) -> BreakerChange {
        if delivered {
            let was_open = self.by_subscription.remove(&subscription).is_some_and(|b| b.open_until.is_some());
            return if was_open { BreakerChange::Closed } else { BreakerChange::None };
        }
        if failures_to_open == 0 {
            return BreakerChange::None;
        }
        let breaker = self.by_subscription.entry(subscription).or_default();
        breaker.failures_in_a_row = breaker.failures_in_a_row.saturating_add(1);
        let was_open = breaker.open_until.is_some();
        if breaker.probing || breaker.failures_in_a_row >= failures_to_open {
            breaker.open_until = Some(now.saturating_add(cool_down_ms));
            breaker.probing = false;
            if !was_open {
                return BreakerChange::Opened;
            }
        }
        BreakerChange::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_never_reached_the_destination_lets_the_next_one_probe() {
        let mut breakers = Breakers::default();
        let id = Uuid::nil();
        let settings = (2, 30_000);
        let now = 1_000_000;
        breakers.record(id, false, settings, now);
        breakers.record(id, false, settings, now);
        let later = now + 31_000;
        assert!(breakers.allows(id, later), "half open: one probe");
        assert!(!breakers.allows(id, later), "one at a time");
        breakers.probe_undecided(id);
        assert!(breakers.holding(later).is_empty(), "not held after an undecided probe");
        assert!(breakers.allows(id, later), "the next attempt probes");
    }

    #[test]
    fn failures_in_a_row_open_it_and_one_probe_decides() {
        let (id, start) = (Uuid::now_v7(), 1_000_000);
        let settings = (3, 10_000);
        let mut breakers = Breakers::default();
        let none = BreakerChange::None;
        assert_eq!(breakers.record(id, false, settings, start), none);
        assert_eq!(breakers.record(id, true, settings, start), none, "a success starts the count again");
        assert_eq!(breakers.record(id, false, settings, start), none);
        assert_eq!(breakers.record(id, false, settings, start), none);
        assert!(breakers.allows(id, start));
        assert_eq!(breakers.record(id, false, settings, start), BreakerChange::Opened, "the third in a row");
        assert!(!breakers.allows(id, start + 9000));
        assert_eq!(breakers.holding(start + 9000), vec![id]);
        let later = start + 10000;
        assert!(breakers.allows(id, later), "half open: one probe");
        assert!(!breakers.allows(id, later), "and only one");
        assert_eq!(breakers.holding(later), vec![id], "nothing more is claimed while it probes");
        assert_eq!(breakers.record(id, false, settings, later), none, "a failed probe opens it again");
        assert!(!breakers.allows(id, later + 5000));
        assert!(breakers.allows(id, later + 10000));
        assert_eq!(breakers.record(id, true, settings, later + 10000), BreakerChange::Closed);
        assert!(breakers.allows(id, later + 10000) && breakers.holding(later).is_empty());
    }

    #[test]
    fn zero_failures_to_open_means_never() {
        let (id, now) = (Uuid::now_v7(), 1_000_000);
        let mut breakers = Breakers::default();
        for _ in 0..100 {
            breakers.record(id, false, (0, 10_000), now);
        }
        assert!(breakers.allows(id, now));
    }
}
