//! `sagaplane bench`: the load generator. Registers the workload's definition, keeps `-c` starts
//! outstanding over HTTP, waits for every saga to end (long-poll), and prints sagas/s and
//! start-to-terminal latency percentiles. Without `--url` it runs an in-process instance (API +
//! worker) on `SAGAPLANE_DATABASE_URL`, or on a fresh SQLite file.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::config::Config;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Workload {
    /// Three core.echo steps.
    Saga3,
    /// Two core.echo steps, then core.fail: two compensations.
    Saga3Fail,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "saga3")]
    workload: Workload,
    /// Sagas to run.
    #[arg(short = 'n', long, default_value_t = 2000)]
    count: usize,
    /// Starts kept outstanding.
    #[arg(short = 'c', long, default_value_t = 64)]
    concurrency: usize,
    /// A running API; without it an in-process instance is started.
    #[arg(long, env = "SAGAPLANE_URL")]
    url: Option<String>,
    #[arg(long, env = "SAGAPLANE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Skip HTTP: start sagas through the intake and wait on the in-process terminal feed, to
    /// measure the engine alone (in-process instance only).
    #[arg(long, conflicts_with = "url")]
    direct: bool,
    /// Also subscribe a fast local receiver to every event (`*`) and measure the deliveries:
    /// the engine's throughput with the outbox busy, and deliveries/s (in-process instance only).
    #[arg(long, conflicts_with = "url")]
    subscribe: bool,
    /// With --subscribe: also subscribe a destination that never answers (each attempt waits
    /// out SAGAPLANE_DELIVERY_TIMEOUT), to see whether it slows the healthy receiver.
    #[arg(long, requires = "subscribe")]
    failing_subscriber: bool,
    /// Subscribe a NATS JetStream stream (made for the run on this server, e.g.
    /// nats://127.0.0.1:4222) to every event and measure the deliveries (in-process instance only).
    #[arg(long, conflicts_with_all = ["url", "subscribe"])]
    subscribe_nats: Option<String>,
    /// Export traces to an OTLP/gRPC sink started in this process (counts the spans it gets),
    /// to measure what tracing costs (in-process instance only).
    #[arg(long, conflicts_with = "url")]
    trace_sink: bool,
}

fn definition(workload: Workload) -> (&'static str, Value, &'static str) {
    let echo = |name: &str| json!({"name": name, "action": {"builtin": "core.echo", "input": {"step": name, "n": "{{ input.n }}"}}, "compensation": {"builtin": "core.echo"}});
    match workload {
        Workload::Saga3 => ("bench-saga3", json!({"steps": [echo("one"), echo("two"), echo("three")]}), "COMPLETED"),
        Workload::Saga3Fail => (
            "bench-saga3-fail",
            json!({"steps": [echo("one"), echo("two"), {"name": "three", "action": {"builtin": "core.fail", "input": {"message": "bench"}}}]}),
            "COMPENSATED",
        ),
    }
}

struct Embedded {
    url: String,
    token: String,
    backend: String,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    app: crate::run::App,
}

async fn start_embedded(config: &Config, subscribe: bool) -> anyhow::Result<Embedded> {
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("sagaplane-bench-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("bench.db").display())
        }
    };
    let parts = crate::run::Parts { tenancy: false, worker: true, dispatcher: subscribe };
    let app = crate::run::App::build(config, &url, parts, None).await?;
    let backend = app.store.backend_name().to_string();
    let token = crate::run::generate_token();
    let (url, stop, server) = serve_on_loopback(app.state(config, &token, None)).await?;
    Ok(Embedded { url, token, backend, stop, server, app })
}

/// The API on a free loopback port, in the background, for an in-process benchmark: its base
/// URL, the switch that stops it (send `true`) and the task to await afterwards.
pub(crate) async fn serve_on_loopback(
    state: server::AppState,
) -> anyhow::Result<(String, tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let router = server::router(state);
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        };
        if let Err(e) = server::serve(listener, router, shutdown).await {
            eprintln!("bench server failed: {e}");
        }
    });
    Ok((url, stop, server))
}

/// Runs the workload and prints the numbers.
pub async fn run(args: BenchArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    if args.count == 0 || args.concurrency == 0 {
        bail!("-n and -c must be positive");
    }
    let sink = match args.trace_sink {
        true => Some(SpanSink::start().await?),
        false => None,
    };
    if let Some(sink) = &sink {
        config.otlp_endpoint = Some(sink.endpoint.clone());
    }
    let traces = match (&args.url, config.otlp_endpoint.as_deref()) {
        (None, Some(endpoint)) => Some(crate::telemetry::init_traces(endpoint)?),
        _ => None,
    };
    let embedded = match &args.url {
        Some(_) => None,
        None => Some(start_embedded(&config, args.subscribe || args.subscribe_nats.is_some()).await?),
    };
    let (base, token, backend) = match &embedded {
        Some(e) => (e.url.clone(), Some(e.token.clone()), e.backend.clone()),
        None => (args.url.clone().unwrap_or_default(), args.token.clone(), "remote".to_string()),
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency * 2).build()?;
    let (name, document, expected) = definition(args.workload);
    let mut put = client.put(format!("{base}/v1/definitions/{name}")).json(&document);
    if let Some(t) = &token {
        put = put.bearer_auth(t);
    }
    let response = put.send().await.context("registering the workload definition")?;
    if !response.status().is_success() {
        bail!("registering {name}: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    let direct = match (&embedded, args.direct) {
        (Some(e), true) => Some(Direct::new(e, name).await?),
        _ => None,
    };
    let receiver = match args.subscribe {
        true => Some(Receiver::start(&client, &base, token.as_deref(), args.failing_subscriber).await?),
        false => None,
    };
    let mut stream = match &args.subscribe_nats {
        Some(nats_url) => Some(NatsReceiver::start(&client, &base, token.as_deref(), nats_url).await?),
        None => None,
    };
    let shared = Arc::new(Load { client, base, token, name, direct, counter: AtomicUsize::new(0) });
    // Warm-up: connections, caches, JIT-free but page-cache-warm database.
    let warmup = args.concurrency.min(args.count);
    drive(shared.clone(), warmup, args.concurrency).await?;
    shared.counter.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let results = drive(shared.clone(), args.count, args.concurrency).await?;
    let elapsed = started.elapsed();
    report(&args, &backend, expected, &results, elapsed);
    if let Some(receiver) = &receiver {
        receiver.report(&backend, warmup + args.count, started).await;
    }
    if let Some(stream) = &mut stream {
        stream.report(&backend, warmup + args.count, started).await?;
    }
    if let Some(embedded) = embedded {
        let _ = embedded.stop.send(true);
        embedded.app.shutdown().await;
        crate::telemetry::shutdown_traces(traces);
        if let Some(sink) = &sink {
            let spans = sink.spans.load(Ordering::SeqCst);
            println!("  traces       {spans} spans received by the in-process OTLP sink");
            println!("RESULT workload=traces backend={backend} spans={spans}");
        }
        let _ = embedded.server.await;
    }
    let all_expected = results.iter().all(|(status, _)| status == expected);
    Ok(if all_expected { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct Load {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    name: &'static str,
    direct: Option<Direct>,
    counter: AtomicUsize,
}

/// Starting sagas without HTTP (`--direct`).
struct Direct {
    hub: saga_runtime::TerminalHub,
    intake: saga_runtime::Intake,
    definition: Arc<saga_core::Definition>,
    version: i32,
}

impl Direct {
    async fn new(embedded: &Embedded, name: &str) -> anyhow::Result<Direct> {
        let (version, definition) = embedded.app.process.definitions.get(name, None).await?;
        let instance = embedded.app.process.instance.as_ref().context("the embedded instance runs no worker")?;
        Ok(Direct { hub: embedded.app.process.hub.clone(), intake: instance.intake(), definition, version })
    }

    async fn one(&self, n: usize) -> anyhow::Result<(String, Duration)> {
        let started = Instant::now();
        let id = uuid::Uuid::now_v7();
        let mut terminal = self.hub.watch(id);
        // The same path as the API: claim on create when a local driver slot is free.
        let state = saga_core::SagaState::new(&self.definition);
        let now_ms = saga_runtime::Clock::now_ms(&saga_runtime::SystemClock);
        let params = saga_store::SagaCreate {
            id,
            ..saga_store::SagaCreate::new(&self.definition.name, self.version, json!({"n": n}), state, now_ms)
        };
        let saga_store::SagaCreated::Created(_) = self.intake.create(params).await? else {
            bail!("saga not created");
        };
        let done = tokio::time::timeout(Duration::from_secs(60), terminal.done()).await?;
        Ok((done.status.as_str().to_string(), started.elapsed()))
    }
}

impl Load {
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    async fn one(&self, n: usize) -> anyhow::Result<(String, Duration)> {
        if let Some(direct) = &self.direct {
            return direct.one(n).await;
        }
        let started = Instant::now();
        let body = json!({"definition": self.name, "input": {"n": n}});
        // Start and wait in one request; a saga still running after 30s is followed with GETs.
        let start = self.client.post(format!("{}/v1/sagas?wait=30s", self.base)).json(&body);
        let response = self.authorized(start).send().await?;
        if response.status().as_u16() != 201 {
            let status = response.status();
            bail!("start failed: {status} {}", response.text().await.unwrap_or_default());
        }
        let mut saga: Value = response.json().await?;
        let id = saga["id"].as_str().context("no saga id")?.to_string();
        loop {
            let status = saga["status"].as_str().unwrap_or("");
            if matches!(status, "COMPLETED" | "COMPENSATED" | "FAILED") {
                return Ok((status.to_string(), started.elapsed()));
            }
            let follow = self.client.get(format!("{}/v1/sagas/{id}?wait=30s", self.base));
            saga = self.authorized(follow).send().await?.json().await?;
        }
    }
}

async fn drive(load: Arc<Load>, count: usize, concurrency: usize) -> anyhow::Result<Vec<(String, Duration)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let load = load.clone();
        tasks.spawn(async move {
            let mut results = Vec::new();
            loop {
                let n = load.counter.fetch_add(1, Ordering::SeqCst);
                if n >= count {
                    return Ok::<_, anyhow::Error>(results);
                }
                results.push(load.one(n).await?);
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("load task panicked")??);
    }
    Ok(all)
}

/// The `p`th percentile (0–100) of sorted values; 0 for none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(args: &BenchArgs, backend: &str, expected: &str, results: &[(String, Duration)], elapsed: Duration) {
    let mut latencies: Vec<Duration> = results.iter().map(|(_, d)| *d).collect();
    latencies.sort();
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for (status, _) in results {
        *statuses.entry(status.as_str()).or_default() += 1;
    }
    let rate = results.len() as f64 / elapsed.as_secs_f64();
    let workload = match args.workload {
        Workload::Saga3 => "saga3",
        Workload::Saga3Fail => "saga3-fail",
    };
    let latencies: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let (p50, p95, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 95.0), percentile(&latencies, 99.0));
    let max = latencies.last().copied().unwrap_or(0.0);
    let backend = if args.direct { format!("{backend}-direct") } else { backend.to_string() };
    println!(
        "workload {workload} on {backend}: n={} c={} in {:.2}s",
        results.len(),
        args.concurrency,
        elapsed.as_secs_f64()
    );
    println!("  sagas/s      {rate:.1}");
    println!("  latency ms   p50 {p50:.1}  p95 {p95:.1}  p99 {p99:.1}  max {max:.1}");
    let summary: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}={n}")).collect();
    println!("  statuses     {} (expected all {expected})", summary.join(" "));
    println!(
        "RESULT workload={workload} backend={backend} n={} c={} sagas_per_s={rate:.1} p50_ms={p50:.2} p95_ms={p95:.2} p99_ms={p99:.2}",
        results.len(),
        args.concurrency
    );
}

/// A fast local webhook receiver subscribed to every event: answers 204, counts, and keeps each
/// delivery's latency (arrival minus the event's `timestamp`).
struct Receiver {
    received: Arc<AtomicUsize>,
    last_at: Arc<std::sync::Mutex<Option<Instant>>>,
    latencies_ms: Arc<std::sync::Mutex<Vec<f64>>>,
    _server: tokio::task::JoinHandle<()>,
}

/// How long the failing subscriber holds each request (beyond any attempt timeout).
const NEVER_ANSWERS: Duration = Duration::from_secs(3600);

impl Receiver {
    async fn start(
        client: &reqwest::Client,
        base: &str,
        token: Option<&str>,
        with_failing: bool,
    ) -> anyhow::Result<Self> {
        let received = Arc::new(AtomicUsize::new(0));
        let last_at = Arc::new(std::sync::Mutex::new(None));
        let latencies_ms = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, last, latencies) = (received.clone(), last_at.clone(), latencies_ms.clone());
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let (count, last, latencies) = (count.clone(), last.clone(), latencies.clone());
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut last) = last.lock() {
                            *last = Some(Instant::now());
                        }
                        if let Some(latency) = latency_ms(&body) {
                            if let Ok(mut latencies) = latencies.lock() {
                                latencies.push(latency);
                            }
                        }
                        axum::http::StatusCode::NO_CONTENT
                    }
                }),
            )
            .route(
                "/stuck",
                axum::routing::post(|| async {
                    tokio::time::sleep(NEVER_ANSWERS).await;
                    axum::http::StatusCode::NO_CONTENT
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        subscribe(client, base, token, json!({"url": format!("http://{address}/hook"), "events": ["*"]})).await?;
        if with_failing {
            subscribe(client, base, token, json!({"url": format!("http://{address}/stuck"), "events": ["*"]})).await?;
        }
        Ok(Receiver { received, last_at, latencies_ms, _server: server })
    }

    /// Waits (at most 5 minutes) for `expected` deliveries and prints the rate since `started`.
    async fn report(&self, backend: &str, expected: usize, started: Instant) {
        let finished_engine = Instant::now();
        let deadline = finished_engine + Duration::from_secs(300);
        while self.received.load(Ordering::SeqCst) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let received = self.received.load(Ordering::SeqCst);
        let last = self.last_at.lock().ok().and_then(|l| *l).unwrap_or(finished_engine);
        let span = last.saturating_duration_since(started).as_secs_f64().max(0.001);
        let lag_ms = last.saturating_duration_since(finished_engine).as_secs_f64() * 1000.0;
        let mut latencies = self.latencies_ms.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_by(f64::total_cmp);
        let p50 = percentile(&latencies, 50.0);
        let p99 = percentile(&latencies, 99.0);
        println!(
            "  deliveries   {received} of {expected} received ({:.1}/s); the last {lag_ms:.0} ms after the last saga; \
             event-to-receiver p50 {p50:.0} ms, p99 {p99:.0} ms",
            received as f64 / span
        );
        println!(
            "RESULT workload=deliveries backend={backend} n={expected} deliveries_per_s={:.1} lag_ms={lag_ms:.0} \
             received={received} latency_p50_ms={p50:.0} latency_p99_ms={p99:.0}",
            received as f64 / span
        );
    }
}

/// Milliseconds from a delivery body's event `timestamp` to now.
fn latency_ms(body: &[u8]) -> Option<f64> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str()?).ok()?;
    Some((chrono::Utc::now().timestamp_millis() - at.timestamp_millis()) as f64)
}

async fn subscribe(client: &reqwest::Client, base: &str, token: Option<&str>, body: Value) -> anyhow::Result<()> {
    let mut request = client.post(format!("{base}/v1/subscriptions")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.context("subscribing")?;
    if response.status().as_u16() != 201 {
        bail!("subscribing: {} {}", response.status(), response.text().await.unwrap_or_default());
    }
    Ok(())
}

/// A JetStream stream made for the run and subscribed to every event; counted from the stream.
struct NatsReceiver {
    stream: async_nats::jetstream::stream::Stream,
    context: async_nats::jetstream::Context,
    name: String,
}

impl NatsReceiver {
    async fn start(client: &reqwest::Client, base: &str, token: Option<&str>, nats_url: &str) -> anyhow::Result<Self> {
        let connection = async_nats::connect(nats_url).await.with_context(|| format!("connecting to {nats_url}"))?;
        let context = async_nats::jetstream::new(connection);
        let name = format!("SAGAPLANE_BENCH_{}", uuid::Uuid::now_v7().simple());
        let subject = format!("sagaplane.bench.{}", uuid::Uuid::now_v7().simple());
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        };
        let stream = context.create_stream(config).await.context("creating the bench stream")?;
        subscribe(client, base, token, json!({"nats": {"url": nats_url, "subject": subject}, "events": ["*"]})).await?;
        Ok(NatsReceiver { stream, context, name })
    }

    /// Waits (at most 5 minutes) for `expected` messages in the stream, prints the rate, and
    /// deletes the stream.
    async fn report(&mut self, backend: &str, expected: usize, started: Instant) -> anyhow::Result<()> {
        let finished_engine = Instant::now();
        let deadline = finished_engine + Duration::from_secs(300);
        let mut stored = 0;
        let mut last = finished_engine;
        while Instant::now() < deadline {
            let now_stored = usize::try_from(self.stream.info().await?.state.messages).unwrap_or(usize::MAX);
            if now_stored > stored {
                (stored, last) = (now_stored, Instant::now());
            }
            if stored >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let span = last.saturating_duration_since(started).as_secs_f64().max(0.001);
        println!("  nats         {stored} of {expected} stored ({:.1}/s)", stored as f64 / span);
        println!(
            "RESULT workload=nats-deliveries backend={backend} n={expected} deliveries_per_s={:.1} stored={stored}",
            stored as f64 / span
        );
        self.context.delete_stream(&self.name).await.context("deleting the bench stream")?;
        Ok(())
    }
}

/// An OTLP/gRPC trace receiver in the bench process: counts spans, keeps nothing.
struct SpanSink {
    endpoint: String,
    spans: Arc<AtomicUsize>,
}

struct CountSpans(Arc<AtomicUsize>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for CountSpans {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        let spans: usize =
            request.into_inner().resource_spans.iter().flat_map(|r| r.scope_spans.iter()).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans, Ordering::SeqCst);
        Ok(tonic::Response::new(Default::default()))
    }
}

impl SpanSink {
    async fn start() -> anyhow::Result<SpanSink> {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans = Arc::new(AtomicUsize::new(0));
        let service = TraceServiceServer::new(CountSpans(spans.clone()));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Ok(SpanSink { endpoint, spans })
    }
}
