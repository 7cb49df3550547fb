//! One seeded run: build the scenario, start the instances on a single-threaded runtime with
//! paused time, play the schedule (sagas, cancels, signals, crashes, pauses, restarts) while
//! the participants and the store misbehave, then let everything calm down, wait for every saga
//! to end, and hand what happened to the [`crate::checker`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::{Definition, SagaState};
use saga_runtime::{BuiltinRegistry, Executors, InstanceConfig, Intake};
use saga_store::{DefinitionStore, EngineStore, SagaCreate, SagaStore, SignalStore};
use serde_json::json;
use uuid::Uuid;

use crate::budget::{Budget, WORK_MAX};
use crate::checker::{self, Observation, Violation};
use crate::memory::{MemoryStore, Sequencer, StoreBugs};
use crate::receivers::{ReceiverNetwork, Receivers};
use crate::scenario::DeliveryPlan;
use crate::scenario::{Dice, InstanceFault, Scenario};
use crate::world::{CommitFaults, Link, LinkState, Network, Participants, SimClock, SimStore};
use delivery::{DispatcherConfig, RetrySchedule};
use process::{Dispatch, Jobs, Process, Wiring, Worker};
use saga_store::DeliveryStatus;

/// Known bugs a run can be told to have, to prove the checker finds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    pub store: StoreBugs,
    /// A step that failed ambiguously is not compensated (saga-core, `sim-bugs` builds only).
    pub skip_ambiguous_compensation: bool,
    /// A driver that takes over does not count its predecessor's possible attempt as started
    /// (saga-core, `sim-bugs` builds only).
    pub skip_adoption: bool,
    /// A wake-up is capped by a deadline that has passed (saga-core, `sim-bugs` builds only).
    pub cap_by_passed_deadline: bool,
}

impl Bugs {
    /// The engine's switches, and whether this run wants each.
    fn engine(&self) -> [(bool, saga_core::bugs::Bug); 3] {
        use saga_core::bugs::Bug;
        [
            (self.skip_ambiguous_compensation, Bug::SkipAmbiguousCompensation),
            (self.skip_adoption, Bug::SkipAdoption),
            (self.cap_by_passed_deadline, Bug::CapByPassedDeadline),
        ]
    }
}

/// How a run is set up beyond its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub bugs: Bugs,
    /// Store calls and participant requests the run may make (see [`crate::budget`]).
    pub work_max: u64,
    /// Durable timers and `when:` conditions in the definitions. Off: the scenario the seed made
    /// before they were simulated (the older regression seeds found their bugs there).
    pub constructs: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { bugs: Bugs::default(), work_max: WORK_MAX, constructs: true }
    }
}

/// How long a run may take, in simulated time, before an unfinished saga is a violation.
pub const RUN_LIMIT_MS: u64 = 30 * 60 * 1000;
/// Once every saga has ended, how much longer the deliveries may take to end. A receiver that
/// never answers drains its backlog one attempt per breaker period (each delivery dead only once
/// its schedule is spent): about a dozen seconds an attempt, so a hundred events take over an hour.
pub const DELIVERY_DRAIN_LIMIT_MS: u64 = 3 * 60 * 60 * 1000;

/// How long creates may take once the run is calm (a dead instance's never finish).
const CREATES_SETTLE_MS: u64 = 60_000;

/// What one run did.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub sagas: usize,
    pub participant_requests: usize,
    /// Deliveries the outbox made, and how many ended delivered.
    pub deliveries: usize,
    pub delivered: usize,
    /// Requests the webhook receivers took.
    pub webhook_requests: usize,
    pub journal_entries: usize,
    /// Store calls and participant requests made (the budget spent).
    pub work: u64,
    /// Simulated time the run took.
    pub simulated_ms: u64,
    pub violations: Vec<Violation>,
    /// The whole run as text: the scenario, then every write and request in order. Two runs of
    /// one seed give the same text.
    pub trace: String,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A readable account of a failing run: the scenario, the violations, and the timeline of
    /// each saga involved.
    pub fn explain(&self) -> String {
        let mut text = String::new();
        for violation in &self.violations {
            text.push_str(&format!("VIOLATION {}: {}\n", violation.guarantee, violation.detail));
        }
        text.push_str(&self.trace);
        text
    }
}

/// Runs `seed` to its end on a fresh single-threaded runtime with paused time.
pub fn run_seed(seed: u64, bugs: Bugs) -> anyhow::Result<RunReport> {
    run_seed_with(seed, RunOptions { bugs, ..RunOptions::default() })
}

/// [`run_seed`] with every option. A run that spends its whole budget of work stops there and
/// reports a liveness violation ("the engine makes progress").
pub fn run_seed_with(seed: u64, options: RunOptions) -> anyhow::Result<RunReport> {
    let bugs = options.bugs;
    for (wanted, bug) in bugs.engine() {
        if wanted && !saga_core::bugs::set(bug, true) {
            anyhow::bail!("this build has no bug switches in saga-core: build with `--features bugs`");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build()?;
    // `Run::new` reads the clock: inside `block_on`, so it reads the paused one. Made outside, it
    // read the wall clock, and the run's every time shifted by however long the runtime took to
    // start (seed 17 once ran 2 ms later the second time).
    let report = runtime.block_on(async move {
        let mut run = Run::new(seed, options);
        let budget = run.budget.clone();
        let played = tokio::select! {
            biased;
            report = run.play() => Some(report),
            () = budget.exhausted() => None,
        };
        match played {
            Some(report) => report,
            None => run.out_of_budget(),
        }
    });
    // Tasks of dead instances never finish: dropping the runtime drops them.
    drop(runtime);
    for (_, bug) in bugs.engine() {
        saga_core::bugs::set(bug, false);
    }
    Ok(report)
}

/// One instance slot: the running process, if any, and its link.
struct Slot {
    /// Its worker and its dispatcher of deliveries, started as a server starts them.
    process: Option<Process>,
    link: Link,
    generation: u32,
}

struct Run {
    scenario: Scenario,
    dice: Dice,
    store: Arc<MemoryStore>,
    clock: Arc<SimClock>,
    participants: Arc<Participants>,
    receivers: Arc<Receivers>,
    faults: Arc<CommitFaults>,
    calm: Arc<AtomicBool>,
    definitions: Vec<(i32, Definition)>,
    slots: Vec<Slot>,
    /// Saga ids in scenario order.
    ids: Vec<Uuid>,
    /// Creates under way (one through a paused instance waits; one through a dead one never ends).
    creates: tokio::task::JoinSet<()>,
    violations: Arc<Mutex<Vec<Violation>>>,
    budget: Arc<Budget>,
}

impl Run {
    fn new(seed: u64, options: RunOptions) -> Run {
        let bugs = options.bugs;
        let dice = Dice::new(seed);
        let scenario = Scenario::generate(seed, &dice, options.constructs);
        let sequencer = Sequencer::default();
        let store = Arc::new(MemoryStore::new(sequencer.clone(), bugs.store));
        let clock = Arc::new(SimClock::new());
        let calm = Arc::new(AtomicBool::new(false));
        let participants = Arc::new(Participants {
            ledger: Mutex::default(),
            misbehaviour: scenario.participants.clone(),
            dice: dice.clone(),
            calm: calm.clone(),
            sequencer: sequencer.clone(),
            store: store.clone(),
            clock: clock.clone(),
        });
        let receivers =
            Arc::new(Receivers::new(scenario.delivery.clone(), seed, calm.clone(), sequencer, clock.clone()));
        for subscription in &receivers.subscriptions {
            store.subscribe(subscription.clone());
        }
        let faults = Arc::new(CommitFaults {
            fail_before: scenario.commit_fail_before,
            fail_after: scenario.commit_fail_after,
            delay: scenario.commit_delay,
            calm: calm.clone(),
        });
        Run {
            scenario,
            dice,
            store,
            clock,
            participants,
            receivers,
            faults,
            calm,
            definitions: Vec::new(),
            slots: Vec::new(),
            ids: Vec::new(),
            creates: tokio::task::JoinSet::new(),
            violations: Arc::default(),
            budget: Arc::new(Budget::new(options.work_max)),
        }
    }

    async fn play(&mut self) -> RunReport {
        if let Err(message) = self.define().await {
            return self.report(vec![Violation::new("scenario", message)]);
        }
        for index in 0..self.scenario.instances {
            let link = Link::new();
            self.slots.push(Slot { process: None, link, generation: 0 });
            self.start(index);
        }
        let mut schedule = self.schedule();
        schedule.sort_by_key(|(at_ms, order, _)| (*at_ms, *order));
        let mut tasks = tokio::task::JoinSet::new();
        let verbose = std::env::var_os("SIM_TRACE").is_some();
        for (at_ms, _, step) in schedule {
            self.sleep_until(at_ms).await;
            if verbose {
                eprintln!("{:>8} ms {step:?}", self.clock.elapsed_ms());
            }
            self.act(step, &mut tasks).await;
        }
        self.sleep_until(self.scenario.calm_at_ms).await;
        self.calm_down();
        // Creates held up by a pause go through now; those sent to a dead instance never will.
        let mut creates = std::mem::take(&mut self.creates);
        let settled = async { while creates.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_millis(CREATES_SETTLE_MS), settled).await;
        creates.abort_all();
        self.start_late_sagas().await;
        let all_ended = self.wait_for_the_end().await;
        for slot in &mut self.slots {
            if let Some(process) = slot.process.take() {
                process.shutdown().await;
            }
        }
        tasks.abort_all();
        let mut violations = std::mem::take(&mut *self.violations.lock().unwrap_or_else(|p| p.into_inner()));
        if !all_ended {
            violations.push(Violation::new(
                "every saga ends",
                format!(
                    "sagas or deliveries still unfinished after {} s of simulated time (deliveries: {} s more once \
                     every saga ended)",
                    RUN_LIMIT_MS / 1000,
                    DELIVERY_DRAIN_LIMIT_MS / 1000
                ),
            ));
        }
        self.report(violations)
    }

    async fn define(&mut self) -> Result<(), String> {
        let names: Vec<&str> = saga_runtime::CORE_BUILTINS.to_vec();
        for plan in &self.scenario.definitions {
            let put = self.store.definition_put(&plan.name, &plan.document, self.clock_now()).await;
            let version = put.map_err(|e| format!("definition {}: {e}", plan.name))?.record.version;
            let definition = saga_core::validate_definition(&plan.name, &plan.document, &names)
                .map_err(|errors| format!("definition {} is invalid: {errors:?}", plan.name))?;
            self.definitions.push((version, definition));
        }
        Ok(())
    }

    fn clock_now(&self) -> i64 {
        saga_runtime::Clock::now_ms(self.clock.as_ref())
    }

    async fn sleep_until(&self, at_ms: u64) {
        let now = self.clock.elapsed_ms();
        if at_ms > now {
            tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
        }
    }

    /// Starts a new process in slot `index`.
    fn start(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.generation += 1;
        slot.link = Link::new();
        let worker_id = format!("w{index}.{}", slot.generation);
        let sim_store = Arc::new(SimStore {
            inner: self.store.clone(),
            link: slot.link.clone(),
            dice: self.dice.clone(),
            faults: self.faults.clone(),
            budget: self.budget.clone(),
        });
        let store: Arc<dyn EngineStore> = sim_store.clone();
        let network = Arc::new(Network {
            participants: self.participants.clone(),
            link: slot.link.clone(),
            budget: self.budget.clone(),
        });
        let builtins = BuiltinRegistry::with_core();
        let builtin_names = builtins.names().into_iter().map(str::to_string).collect();
        let executors = Executors::new(builtins).with_http_transport(network);
        let mut config = InstanceConfig::new(worker_id.clone());
        config.concurrency = self.dice.between(2, 16) as u32;
        config.lease_ttl_ms = self.scenario.lease_ttl_ms;
        config.poll_interval_ms = 500;
        config.seed = Some(self.dice.between(0, u64::MAX - 1));
        config.shutdown_grace_ms = 2_000;
        let worker = Worker { config, executors, hook: None };
        let receivers =
            ReceiverNetwork { receivers: self.receivers.clone(), link: slot.link.clone(), budget: self.budget.clone() };
        // Its own dice: what deliveries draw leaves the engine's draws as they were.
        let dispatch = Dispatch {
            store: Arc::new(SimStore { dice: self.receivers.dice.clone(), ..SimStore::clone(&sim_store) }),
            config: dispatcher_config(&worker_id, &self.scenario.delivery),
            transport: Some(Arc::new(receivers)),
        };
        let wiring = Wiring { store, clock: self.clock.clone(), builtin_names };
        let jobs = Jobs { worker: Some(worker), dispatch: Some(dispatch), retention: None, bulk: None };
        slot.process = Some(Process::start(wiring, jobs));
    }

    /// Everything the scenario makes happen, with its time and a tie-breaker.
    fn schedule(&self) -> Vec<(u64, usize, Step)> {
        let mut schedule = Vec::new();
        for (n, saga) in self.scenario.sagas.iter().enumerate() {
            schedule.push((saga.at_ms, schedule.len(), Step::Create(n)));
            if let Some(at_ms) = saga.cancel_at_ms {
                schedule.push((at_ms, schedule.len(), Step::Cancel(n)));
            }
            for at_ms in &saga.signals_at_ms {
                schedule.push((*at_ms, schedule.len(), Step::Signal(n)));
            }
        }
        for fault in &self.scenario.faults {
            schedule.push((fault.at_ms, schedule.len(), Step::Fault(fault.instance, fault.fault)));
        }
        schedule
    }

    async fn act(&mut self, step: Step, tasks: &mut tokio::task::JoinSet<()>) {
        match step {
            Step::Create(n) => {
                let (params, intake) = self.create(n);
                self.ids.push(params.id);
                self.creates.spawn(async move {
                    // A create that fails (its instance died) is simply not there: the checker
                    // only judges sagas the store holds.
                    let _ = intake.create(params).await;
                });
            }
            Step::Cancel(n) => {
                if let Some(id) = self.ids.get(n).copied() {
                    let _ = self.store.saga_cancel_request(id, self.clock_now(), None).await;
                }
            }
            Step::Signal(n) => {
                if let Some(id) = self.ids.get(n).copied() {
                    let _ = self.store.signal_send(id, "go", &json!({"n": n}), self.clock_now(), None).await;
                }
            }
            Step::Fault(index, fault) => self.fault(index, fault, tasks).await,
        }
    }

    /// Saga `n`'s create and the intake it goes through.
    fn create(&self, n: usize) -> (SagaCreate, Intake) {
        let plan = &self.scenario.sagas[n];
        let (version, definition) = &self.definitions[plan.definition];
        let now_ms = self.clock_now();
        let id = uuid::Builder::from_unix_timestamp_millis(now_ms as u64, &self.dice.bytes::<10>()).into_uuid();
        let params = SagaCreate {
            id,
            concurrency: definition.concurrency.as_ref().map(|c| (plan.key.clone(), c.limit)),
            ..SagaCreate::new(
                &definition.name,
                *version,
                json!({"n": n, "key": plan.key}),
                SagaState::started(definition, now_ms),
                now_ms,
            )
        };
        let live = self.slots.iter().filter_map(|s| s.process.as_ref()?.instance.as_ref()).collect::<Vec<_>>();
        let intake = match live.get(self.dice.between(0, live.len().max(1) as u64 - 1) as usize) {
            Some(handle) if plan.through_intake => handle.intake(),
            _ => Intake::without_instance(self.store.clone()),
        };
        (params, intake)
    }

    async fn fault(&mut self, index: usize, fault: InstanceFault, tasks: &mut tokio::task::JoinSet<()>) {
        if self.slots[index].process.is_none() {
            return;
        }
        match fault {
            InstanceFault::Crash { restart_after_ms } => {
                self.crash(index);
                tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
                self.start(index);
            }
            InstanceFault::Pause { for_ms } => {
                let link = self.slots[index].link.clone();
                link.set(LinkState::Paused);
                tasks.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    if link.state() == LinkState::Paused {
                        link.set(LinkState::Up);
                    }
                });
            }
            InstanceFault::Restart => {
                let worker_id = format!("w{index}.{}", self.slots[index].generation);
                self.slots[index].link.set(LinkState::Up);
                if let Some(process) = self.slots[index].process.take() {
                    process.shutdown().await;
                }
                self.check_handed_back(&worker_id);
                self.start(index);
            }
        }
    }

    fn crash(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.link.set(LinkState::Dead);
        // Its tasks live on, but nothing they send arrives: the process is gone.
        drop(slot.process.take());
    }

    /// A graceful stop hands every lease back (docs/operations.md, "Processes"): no unexpired one
    /// may stay with the stopped worker (an expired one holds nothing: any instance may claim the
    /// saga).
    fn check_handed_back(&self, worker_id: &str) {
        let now_ms = self.clock_now();
        let kept: Vec<Uuid> = self
            .store
            .sagas()
            .into_iter()
            .filter(|s| s.lease_owner.as_deref() == Some(worker_id))
            .filter(|s| s.lease_expires_at_ms.is_some_and(|until| until > now_ms))
            .map(|s| s.id)
            .collect();
        if !kept.is_empty() {
            let detail = format!("{worker_id} stopped gracefully but still holds the leases of {kept:?}");
            self.violations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Violation::new("leases handed back", detail));
        }
    }

    /// Faults stop: every process is up (a dead one restarted), participants and commits behave.
    fn calm_down(&mut self) {
        self.calm.store(true, Ordering::SeqCst);
        for index in 0..self.slots.len() {
            match self.slots[index].link.state() {
                LinkState::Dead => self.start(index),
                LinkState::Paused => self.slots[index].link.set(LinkState::Up),
                LinkState::Up if self.slots[index].process.is_none() => self.start(index),
                LinkState::Up => {}
            }
        }
    }

    /// Starts the sagas of the calm (see [`DeliveryPlan::late_sagas_at_ms`]).
    async fn start_late_sagas(&mut self) {
        let settled_at = self.scenario.calm_at_ms + self.scenario.delivery.settled_ms();
        let mut at = self.scenario.delivery.late_sagas_at_ms.clone();
        at.sort_unstable();
        for (n, at_ms) in at.into_iter().enumerate() {
            self.sleep_until(settled_at + at_ms).await;
            let (params, intake) = self.create(n % self.scenario.sagas.len());
            let _ = intake.create(params).await;
        }
    }

    /// Waits (in simulated time) until every saga has ended; false if the limit passed first.
    async fn wait_for_the_end(&self) -> bool {
        let mut deadline = self.clock.elapsed_ms() + RUN_LIMIT_MS;
        let mut draining = false;
        while self.clock.elapsed_ms() < deadline {
            let delivered =
                || self.store.outbox().deliveries.iter().all(|d| d.record.status != DeliveryStatus::Pending);
            let ended = self.store.sagas().iter().all(|s| s.status.is_terminal());
            if ended && delivered() {
                return true;
            }
            if ended && !draining {
                draining = true;
                deadline = self.clock.elapsed_ms() + DELIVERY_DRAIN_LIMIT_MS;
            }
            if std::env::var_os("SIM_TRACE").is_some() {
                let open: Vec<String> = self
                    .store
                    .sagas()
                    .iter()
                    .filter(|s| !s.status.is_terminal())
                    .map(|s| {
                        format!(
                            "{} {} {:?} run_at {}",
                            s.id,
                            s.status.as_str(),
                            s.lease_owner,
                            s.run_at_ms - crate::world::EPOCH_MS
                        )
                    })
                    .collect();
                eprintln!("{:>8} ms waiting for {open:?}", self.clock.elapsed_ms());
            }
            tokio::time::sleep(Duration::from_millis(1_000)).await;
        }
        false
    }

    /// The run spent its whole budget of work: something spins. Reported with the saga that
    /// wrote the most, whose timeline shows the loop.
    fn out_of_budget(&self) -> RunReport {
        let mut writes: BTreeMap<Uuid, usize> = BTreeMap::new();
        for entry in self.store.journal() {
            *writes.entry(entry.saga_id).or_default() += 1;
        }
        let busiest = writes.into_iter().max_by_key(|(id, count)| (*count, std::cmp::Reverse(*id)));
        let detail = format!(
            "the run spent its budget of {} store calls and participant requests at {} ms of simulated time \
             without every saga ending: something spins without time moving",
            self.budget.limit(),
            self.clock.elapsed_ms()
        );
        let violation = match busiest {
            Some((id, count)) => {
                Violation::of(id, "liveness", format!("{detail}; this saga has {count} journal entries"))
            }
            None => Violation::new("liveness", detail),
        };
        self.report(vec![violation])
    }

    fn report(&self, mut violations: Vec<Violation>) -> RunReport {
        let ledger = self.participants.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let outbox = self.store.outbox();
        let received = self.receivers.received();
        let observation = Observation {
            scenario: &self.scenario,
            journal: self.store.journal(),
            sagas: self.store.sagas().into_iter().map(|s| (s.id, s)).collect::<BTreeMap<_, _>>(),
            effects: &ledger.effects,
            requests: &ledger.requests,
            outbox: &outbox,
            received: &received,
        };
        violations.extend(checker::check(&observation));
        RunReport {
            seed: self.scenario.seed,
            sagas: observation.sagas.len(),
            participant_requests: ledger.requests.len(),
            deliveries: outbox.deliveries.len(),
            delivered: outbox.deliveries.iter().filter(|d| d.record.status == DeliveryStatus::Succeeded).count(),
            webhook_requests: received.len(),
            journal_entries: observation.journal.len(),
            work: self.budget.spent(),
            simulated_ms: self.clock.elapsed_ms(),
            trace: if std::env::var_os("SIM_DUMP").is_some() {
                checker::timeline(&observation, &[])
            } else {
                checker::timeline(&observation, &violations)
            },
            violations,
        }
    }
}

/// A dispatcher's settings in a run.
fn dispatcher_config(worker_id: &str, plan: &DeliveryPlan) -> DispatcherConfig {
    let mut config = DispatcherConfig::new(worker_id, RetrySchedule::new(plan.schedule_ms.clone()));
    config.attempt_timeout_ms = plan.attempt_timeout_ms;
    config.concurrency = plan.concurrency;
    config.per_subscription_max = plan.per_subscription_max;
    config.lease_ttl_ms = plan.lease_ttl_ms;
    config.poll_interval_ms = plan.poll_interval_ms;
    config.breaker_failures = plan.breaker_failures;
    config.breaker_cool_down_ms = plan.breaker_cool_down_ms;
    config
}

/// One scheduled happening.
#[derive(Clone, Copy, Debug)]
enum Step {
    Create(usize),
    Cancel(usize),
    Signal(usize),
    Fault(usize, InstanceFault),
}
