//! What one seed asks for: the definitions, the sagas and when they start, the cancels and
//! signals, the instances and what happens to them, and how often each part misbehaves. Every
//! field comes from the seed's [`Dice`], in a fixed order, so a seed always means one scenario.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The seed's random numbers, shared by everything in a run. A single-threaded runtime with
/// paused time polls tasks in one order on every run, so the draws come in one order too.
#[derive(Clone)]
pub struct Dice(Arc<Mutex<StdRng>>);

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        match self.0.lock() {
            Ok(mut rng) => f(&mut rng),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// True with probability `p`.
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.with(|rng| rng.random::<f64>() < p)
    }

    /// A number in `low..=high`.
    pub fn between(&self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        self.with(|rng| rng.random_range(low..=high))
    }

    pub fn bytes<const N: usize>(&self) -> [u8; N] {
        self.with(|rng| {
            let mut bytes = [0u8; N];
            rng.fill(&mut bytes[..]);
            bytes
        })
    }
}

/// The participants a definition's steps talk to.
pub const PARTICIPANTS: u64 = 3;

/// One step as the scenario made it (the checker's view of the definition).
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub name: String,
    /// `p0`, `p1`, …; None for a signal or sleep step.
    pub participant: Option<String>,
    pub compensated: bool,
    pub is_async: bool,
    pub pivot: bool,
    /// A `sleep` step's duration.
    pub sleep_ms: Option<u64>,
    /// `when: "{{ input.n % 2 == 0 }}"`: the step runs only for even-numbered sagas.
    pub when_even: bool,
    /// A child saga step: the definition its child runs (one made before this one, so no cycle).
    pub child: Option<String>,
    /// A `parallel` group: its branches' steps (each branch runs as a child saga). A `for_each`
    /// (`for_each` set): one branch, run once per item.
    pub branches: Option<Vec<Vec<StepPlan>>>,
    /// A `for_each` over `range(input.n % 3 + 1)`: its branches are one per item, each running
    /// `branches[0]`.
    pub for_each: bool,
}

impl StepPlan {
    /// The branches a saga with input `n` runs for this group: `(index, steps)`.
    pub fn branches_for(&self, n: Option<u64>) -> Vec<&[StepPlan]> {
        let Some(branches) = &self.branches else { return Vec::new() };
        match self.for_each {
            true => (0..n.map_or(1, |n| n % 3 + 1)).filter_map(|_| branches.first().map(Vec::as_slice)).collect(),
            false => branches.iter().map(Vec::as_slice).collect(),
        }
    }
}

impl StepPlan {
    /// A step that waits for the signal `go`.
    pub fn is_signal(&self) -> bool {
        self.participant.is_none() && self.sleep_ms.is_none() && self.child.is_none() && self.branches.is_none()
    }
}

#[derive(Clone, Debug)]
pub struct DefinitionPlan {
    pub name: String,
    pub document: Value,
    pub steps: Vec<StepPlan>,
    /// `concurrency.limit` when the definition has a key.
    pub concurrency_limit: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct SagaPlan {
    pub definition: usize,
    pub at_ms: u64,
    pub key: String,
    /// Created through an instance's intake (leased to it when it has room) or left due for
    /// any instance's claim.
    pub through_intake: bool,
    pub cancel_at_ms: Option<u64>,
    pub signals_at_ms: Vec<u64>,
}

/// Something that happens to an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceFault {
    /// The process dies (nothing it does reaches anyone any more) and a new one starts `restart_after_ms` later.
    Crash { restart_after_ms: u64 },
    /// It stops for this long (a GC pause, a frozen VM) and wakes as a possible zombie.
    Pause { for_ms: u64 },
    /// SIGTERM: it hands everything back, then a new one starts.
    Restart,
}

#[derive(Clone, Debug)]
pub struct FaultPlan {
    pub at_ms: u64,
    pub instance: usize,
    pub fault: InstanceFault,
}

/// How often one participant misbehaves (per request, while the run is not calm).
#[derive(Clone, Copy, Debug, Default)]
pub struct Misbehaviour {
    /// The first request for an effect is refused (a definite 4xx; the participant did nothing).
    pub refuse: f64,
    /// No answer: the connection fails before the request arrives.
    pub unreachable: f64,
    /// 503 before doing anything.
    pub fail_before: f64,
    /// Does the work, then answers 503 (ambiguous).
    pub fail_after: f64,
    /// Does the work and answers only after the attempt timed out.
    pub hang: f64,
    /// Does the work and answers late, within the timeout.
    pub slow: f64,
    /// A compensation is refused (definite): the saga ends FAILED for an operator.
    pub refuse_compensation: f64,
    /// An async participant calls back twice.
    pub callback_twice: f64,
    /// An async participant never calls back.
    pub callback_never: f64,
    /// An async participant reports a definite failure.
    pub callback_fails: f64,
    /// An async participant reports a retryable failure.
    pub callback_retryable: f64,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    pub instances: usize,
    pub lease_ttl_ms: i64,
    pub definitions: Vec<DefinitionPlan>,
    pub sagas: Vec<SagaPlan>,
    pub faults: Vec<FaultPlan>,
    pub participants: Vec<Misbehaviour>,
    /// Per commit batch: fails before it is written, is written but its answer is lost, is delayed.
    pub commit_fail_before: f64,
    pub commit_fail_after: f64,
    pub commit_delay: f64,
    /// Faults stop here; afterwards everything behaves until every saga has ended.
    pub calm_at_ms: u64,
    /// The subscriptions, their receivers and the dispatchers' settings.
    pub delivery: DeliveryPlan,
}

/// How a receiver of webhooks behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Temper {
    /// Answers 204 within 50 ms.
    Healthy,
    /// Answers 500, or 503 with a `Retry-After` of `retry_after_s` (0: none), with probability
    /// `fail`; otherwise 204.
    Flaky { fail: f64, retry_after_s: u64 },
    /// Answers 204 after `min_ms..=max_ms`, beyond the attempt timeout at times.
    Slow { min_ms: u64, max_ms: u64 },
    /// Takes the request and never answers; once the run is calm, answers like a healthy one
    /// if `recovers`.
    Stalled { recovers: bool },
    /// Refuses connections until the run is calm.
    Down,
}

/// One subscription and its receiver.
#[derive(Clone, Debug)]
pub struct ReceiverPlan {
    pub temper: Temper,
    /// The subscription's event filter.
    pub events: Vec<String>,
}

/// Outbound delivery in a run: who subscribes and how the dispatchers are set.
#[derive(Clone, Debug)]
pub struct DeliveryPlan {
    pub receivers: Vec<ReceiverPlan>,
    pub schedule_ms: Vec<u64>,
    pub attempt_timeout_ms: u64,
    pub per_subscription_max: u32,
    /// Attempts in flight per dispatcher: at least every subscription's share.
    pub concurrency: u32,
    pub breaker_failures: u32,
    pub breaker_cool_down_ms: u64,
    pub lease_ttl_ms: i64,
    pub poll_interval_ms: u64,
    /// Sagas started once the run is calm and its dispatchers poll undisturbed (ms after
    /// [`DeliveryPlan::settled_ms`]), each like the scenario's saga of that index: their events
    /// show whether a slow destination holds up the others.
    pub late_sagas_at_ms: Vec<u64>,
}

impl DeliveryPlan {
    /// The plan of `seed`, from dice of its own: the engine's scenario of a seed stays what it
    /// was before deliveries were simulated.
    pub fn generate(seed: u64) -> DeliveryPlan {
        let dice = Dice::new(seed.rotate_left(23) ^ 0xDE11_7E12_5EED_0001);
        let filters: [&[&str]; 4] = [
            &["*"],
            &["saga.completed"],
            &["saga.compensated", "saga.failed"],
            &["saga.completed", "tenant.activated"],
        ];
        let receivers = (0..dice.between(1, 4))
            .map(|_| {
                let temper = match dice.between(0, 5) {
                    0 | 1 => Temper::Healthy,
                    2 => Temper::Flaky {
                        fail: dice.between(10, 70) as f64 / 100.0,
                        retry_after_s: [0, 0, 1, 3][dice.between(0, 3) as usize],
                    },
                    3 => Temper::Slow { min_ms: dice.between(10, 500), max_ms: dice.between(500, 4_000) },
                    4 => Temper::Stalled { recovers: dice.chance(0.5) },
                    _ => Temper::Down,
                };
                let events = filters[dice.between(0, 3) as usize].iter().map(|e| e.to_string()).collect();
                ReceiverPlan { temper, events }
            })
            .collect::<Vec<_>>();
        let per_subscription_max = dice.between(1, 4) as u32;
        let attempt_timeout_ms = dice.between(500, 3_000);
        DeliveryPlan {
            concurrency: per_subscription_max * receivers.len() as u32 + dice.between(0, 4) as u32,
            receivers,
            schedule_ms: (0..dice.between(0, 4)).map(|n| dice.between(200, 2_000) << n).collect(),
            attempt_timeout_ms,
            per_subscription_max,
            breaker_failures: dice.between(0, 6) as u32,
            breaker_cool_down_ms: dice.between(1_000, 10_000),
            lease_ttl_ms: (attempt_timeout_ms + dice.between(1_000, 5_000)) as i64,
            poll_interval_ms: dice.between(200, 1_500),
            late_sagas_at_ms: (0..dice.between(2, 8)).map(|_| dice.between(0, 20_000)).collect(),
        }
    }

    /// How long after the calm every dispatcher polls undisturbed: a claim that failed before
    /// it backs off for up to 32 polls, and an attempt sent then ends within its timeout.
    pub fn settled_ms(&self) -> u64 {
        32 * self.poll_interval_ms + self.attempt_timeout_ms
    }
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn generate(seed: u64, dice: &Dice, constructs: bool) -> Scenario {
        let instances = dice.between(1, 3) as usize;
        let lease_ttl_ms = [1_500, 3_000, 6_000][dice.between(0, 2) as usize];
        // Durable timers and conditions come from dice of their own: a seed's scenario stays
        // what it was before they were simulated, apart from them.
        // Child saga steps and groups have dice of their own again, for the same reason.
        let children = constructs.then(|| Dice::new(seed.rotate_left(23) ^ 0x5A_6A_C4_11_D0_0B_E5_17));
        let groups = constructs.then(|| Dice::new(seed.rotate_left(7) ^ 0x6B_0C_9A_E1_22_F4_3D_81));
        let constructs = constructs.then(|| Dice::new(seed.rotate_left(41) ^ 0xC0_4E_57_2A_C7_5E_ED_02));
        let definitions = (0..dice.between(1, 3))
            .map(|n| {
                definition(
                    dice,
                    Extras { constructs: constructs.as_ref(), children: children.as_ref(), groups: groups.as_ref() },
                    n,
                )
            })
            .collect::<Vec<_>>();
        let calm_at_ms = dice.between(10_000, 30_000);
        let sagas = (0..dice.between(3, 24))
            .map(|_| {
                let definition = dice.between(0, definitions.len() as u64 - 1) as usize;
                let at_ms = dice.between(0, calm_at_ms / 2);
                let has_signal = definitions[definition].steps.iter().any(StepPlan::is_signal);
                SagaPlan {
                    definition,
                    at_ms,
                    key: format!("k{}", dice.between(0, 2)),
                    through_intake: dice.chance(0.7),
                    cancel_at_ms: dice.chance(0.12).then(|| at_ms + dice.between(0, 8_000)),
                    signals_at_ms: if has_signal {
                        (0..dice.between(0, 2)).map(|_| at_ms + dice.between(0, 6_000)).collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        let faults = (0..dice.between(0, 4))
            .map(|_| {
                let fault = match dice.between(0, 2) {
                    0 => InstanceFault::Crash { restart_after_ms: dice.between(0, 5_000) },
                    1 => InstanceFault::Pause { for_ms: dice.between(100, 3 * lease_ttl_ms as u64) },
                    _ => InstanceFault::Restart,
                };
                FaultPlan {
                    at_ms: dice.between(0, calm_at_ms),
                    instance: dice.between(0, instances as u64 - 1) as usize,
                    fault,
                }
            })
            .collect();
        let participants = (0..PARTICIPANTS).map(|_| misbehaviour(dice)).collect();
        Scenario {
            seed,
            instances,
            lease_ttl_ms,
            definitions,
            sagas,
            faults,
            participants,
            commit_fail_before: dice.between(0, 5) as f64 / 100.0,
            commit_fail_after: dice.between(0, 3) as f64 / 100.0,
            commit_delay: dice.between(0, 10) as f64 / 100.0,
            calm_at_ms,
            delivery: DeliveryPlan::generate(seed),
        }
    }

    /// One line per part, for a failing run's report.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "seed {}: {} instance(s), lease ttl {} ms, {} saga(s), calm at {} ms, commits fail {:.2}/{:.2} (before/after), delayed {:.2}\n",
            self.seed,
            self.instances,
            self.lease_ttl_ms,
            self.sagas.len(),
            self.calm_at_ms,
            self.commit_fail_before,
            self.commit_fail_after,
            self.commit_delay
        );
        for definition in &self.definitions {
            text.push_str(&format!("  definition {}: {}\n", definition.name, definition.document));
        }
        for fault in &self.faults {
            text.push_str(&format!("  at {} ms instance {}: {:?}\n", fault.at_ms, fault.instance, fault.fault));
        }
        for (n, participant) in self.participants.iter().enumerate() {
            text.push_str(&format!("  p{n}: {participant:?}\n"));
        }
        let plan = &self.delivery;
        text.push_str(&format!(
            "  deliveries: schedule {:?} ms, timeout {} ms, {} per subscription of {}, breaker {} failures / {} ms, lease {} ms, poll {} ms\n",
            plan.schedule_ms, plan.attempt_timeout_ms, plan.per_subscription_max, plan.concurrency,
            plan.breaker_failures, plan.breaker_cool_down_ms, plan.lease_ttl_ms, plan.poll_interval_ms
        ));
        for (n, receiver) in plan.receivers.iter().enumerate() {
            text.push_str(&format!("  r{n}: {:?} for {:?}\n", receiver.temper, receiver.events));
        }
        text
    }
}

fn percent(dice: &Dice, max: u64) -> f64 {
    dice.between(0, max) as f64 / 100.0
}

fn misbehaviour(dice: &Dice) -> Misbehaviour {
    Misbehaviour {
        refuse: percent(dice, 10),
        unreachable: percent(dice, 5),
        fail_before: percent(dice, 20),
        fail_after: percent(dice, 10),
        hang: percent(dice, 8),
        slow: percent(dice, 20),
        refuse_compensation: percent(dice, 2),
        callback_twice: percent(dice, 20),
        callback_never: percent(dice, 10),
        callback_fails: percent(dice, 10),
        callback_retryable: percent(dice, 10),
    }
}

/// The dice of the constructs beyond plain steps, each its own (None: not simulated).
#[derive(Clone, Copy)]
struct Extras<'a> {
    constructs: Option<&'a Dice>,
    children: Option<&'a Dice>,
    groups: Option<&'a Dice>,
}

/// A plain HTTP step of a group's branch, from the groups' dice.
fn branch_step(dice: &Dice, name: String) -> (Value, StepPlan) {
    let participant = format!("p{}", dice.between(0, PARTICIPANTS - 1));
    let compensated = dice.chance(0.85);
    let mut document = json!({
        "name": name,
        "action": {"http": {"method": "POST", "url": format!("http://{participant}/act"), "body": {"n": "{{ input.n }}"}}},
        "timeout": format!("{}ms", dice.between(300, 2_000)),
        "retry": {"max_attempts": dice.between(1, 4), "initial_interval": format!("{}ms", dice.between(50, 1_000)), "multiplier": 2.0, "jitter": 0.2},
    });
    if compensated {
        document["compensation"] = json!({"http": {"method": "POST", "url": format!("http://{participant}/undo")}});
        document["compensation_retry"] =
            json!({"max_attempts": 30, "initial_interval": "100ms", "multiplier": 2.0, "max_interval": "2s"});
    }
    let plan = StepPlan {
        name,
        participant: Some(participant),
        compensated,
        is_async: false,
        pivot: false,
        sleep_ms: None,
        when_even: false,
        child: None,
        branches: None,
        for_each: false,
    };
    (document, plan)
}

/// A group named `g<at>` (its steps `g<at>b<i>s<j>`): a `parallel` of 2–3 branches of 1–2 steps
/// each, or a `for_each` over `n % 3 + 1` items of one such branch.
fn group(dice: &Dice, at: usize) -> (Value, StepPlan) {
    let for_each = dice.chance(0.4);
    let mut documents = Vec::new();
    let mut plans = Vec::new();
    for branch in 0..if for_each { 1 } else { dice.between(2, 3) } {
        let steps: Vec<(Value, StepPlan)> =
            (0..dice.between(1, 2)).map(|step| branch_step(dice, format!("g{at}b{branch}s{step}"))).collect();
        documents.push(steps.iter().map(|(document, _)| document.clone()).collect::<Vec<_>>());
        plans.push(steps.into_iter().map(|(_, plan)| plan).collect::<Vec<_>>());
    }
    let concurrency = dice.between(1, 3);
    let document = match for_each {
        true => json!({"name": format!("g{at}"), "for_each": "{{ range(input.n % 3 + 1) | list }}",
                       "steps": documents[0], "concurrency": concurrency}),
        false => json!({"name": format!("g{at}"), "parallel": documents, "concurrency": concurrency}),
    };
    let plan = StepPlan {
        name: format!("g{at}"),
        participant: None,
        compensated: true,
        is_async: false,
        pivot: false,
        sleep_ms: None,
        when_even: false,
        child: None,
        branches: Some(plans),
        for_each,
    };
    (document, plan)
}

fn definition(dice: &Dice, extras: Extras<'_>, n: u64) -> DefinitionPlan {
    let Extras { constructs, children, groups } = extras;
    let construct = |p: f64| constructs.is_some_and(|c| c.chance(p));
    let name = format!("sim{n}");
    let count = dice.between(1, 4);
    let pivot_at = dice.chance(0.25).then(|| dice.between(0, count - 1));
    let mut steps = Vec::new();
    let mut documents = Vec::new();
    for index in 0..count {
        if let (true, Some(constructs)) = (construct(0.15), constructs) {
            let sleep_ms = constructs.between(50, 5_000);
            let name = format!("t{index}");
            documents.push(json!({"name": name, "action": {"sleep": {"duration": format!("{sleep_ms}ms")}}}));
            steps.push(StepPlan {
                name,
                participant: None,
                compensated: false,
                is_async: false,
                pivot: false,
                sleep_ms: Some(sleep_ms),
                when_even: false,
                child: None,
                branches: None,
                for_each: false,
            });
        }
        let when_even = construct(0.15);
        let step_name = format!("s{index}");
        let pivot = pivot_at == Some(index);
        if dice.chance(0.1) && !pivot {
            let timeout_ms = dice.between(1_000, 6_000);
            documents.push(
                json!({"name": step_name, "action": {"signal": {"name": "go", "timeout": format!("{timeout_ms}ms")}}}),
            );
            steps.push(StepPlan {
                name: step_name,
                participant: None,
                compensated: false,
                is_async: false,
                pivot,
                sleep_ms: None,
                when_even: false,
                child: None,
                branches: None,
                for_each: false,
            });
            continue;
        }
        let participant = format!("p{}", dice.between(0, PARTICIPANTS - 1));
        let is_async = dice.chance(0.2);
        let compensated = dice.chance(0.85);
        let mut action =
            json!({"method": "POST", "url": format!("http://{participant}/act"), "body": {"n": "{{ input.n }}"}});
        if is_async {
            action["async"] = json!(true);
        }
        let mut document = json!({
            "name": step_name,
            "action": {"http": action},
            "timeout": format!("{}ms", dice.between(300, 2_000)),
            "retry": {"max_attempts": dice.between(1, 4), "initial_interval": format!("{}ms", dice.between(50, 1_000)), "multiplier": 2.0, "jitter": 0.2},
        });
        if compensated {
            document["compensation"] = json!({"http": {"method": "POST", "url": format!("http://{participant}/undo")}});
            document["compensation_retry"] =
                json!({"max_attempts": 30, "initial_interval": "100ms", "multiplier": 2.0, "max_interval": "2s"});
        }
        if is_async {
            document["heartbeat_timeout"] = json!(format!("{}ms", dice.between(500, 4_000)));
        }
        if pivot {
            document["pivot"] = json!(true);
        }
        if when_even {
            document["when"] = json!("{{ input.n % 2 == 0 }}");
        }
        documents.push(document);
        steps.push(StepPlan {
            name: step_name,
            participant: Some(participant),
            compensated,
            is_async,
            pivot,
            sleep_ms: None,
            when_even,
            child: None,
            branches: None,
            for_each: false,
        });
    }
    // A child saga step, running the first definition (which has none, so no saga starts itself
    // and the volume of a run at most doubles: a run with receivers that never answer must still
    // drain its deliveries within the run's limit). Its concurrency key is its own (a child
    // sharing its parent's key at limit 1 would wait behind the parent that waits for it).
    if let Some(children) = children.filter(|c| n > 0 && c.chance(0.3)) {
        let child = "sim0".to_string();
        let at = children.between(0, steps.len() as u64) as usize;
        let step_name = format!("c{at}");
        let input = json!({"n": "{{ input.n }}", "key": "child-{{ input.key }}"});
        documents.insert(at, json!({"name": step_name, "action": {"saga": {"definition": child, "input": input}}}));
        steps.insert(
            at,
            StepPlan {
                name: step_name,
                participant: None,
                compensated: true,
                is_async: false,
                pivot: false,
                sleep_ms: None,
                when_even: false,
                child: Some(child),
                branches: None,
                for_each: false,
            },
        );
    }
    // A parallel group, anywhere (before a pivot too: its branches are undone whole).
    if let Some(groups) = groups.filter(|g| g.chance(0.3)) {
        let at = groups.between(0, steps.len() as u64) as usize;
        let (document, plan) = group(groups, at);
        documents.insert(at, document);
        steps.insert(at, plan);
    }
    let mut document = json!({"name": name, "steps": documents});
    let concurrency_limit = dice.chance(0.3).then(|| dice.between(1, 2) as u32);
    if let Some(limit) = concurrency_limit {
        document["concurrency"] = json!({"key": "{{ input.key }}", "limit": limit});
    }
    if dice.chance(0.2) {
        document["timeout"] = json!(format!("{}ms", dice.between(5_000, 40_000)));
        document["on_timeout"] = json!(if dice.chance(0.5) { "compensate" } else { "fail" });
    }
    DefinitionPlan { name, document, steps, concurrency_limit }
}
