//! `shop run`: the three services, the `order` definition, N orders through Sagaplane's API
//! with faults (a participant killed and restarted, an orchestrator SIGKILLed), the wait for
//! every saga to end, then the reconciliation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::service::{Kind, Stock};

#[derive(clap::Args)]
pub struct Args {
    /// A running Sagaplane to use (e.g. `sagaplane dev`); otherwise `--orchestrators` are started.
    #[arg(long, env = "SAGAPLANE_URL")]
    url: Option<String>,
    /// Its admin token (`sagaplane dev` prints it).
    #[arg(long, env = "SAGAPLANE_TOKEN")]
    token: Option<String>,
    /// Orchestrator instances to start on `--database` (PostgreSQL for more than one).
    #[arg(long, default_value_t = 3)]
    orchestrators: usize,
    /// Sagaplane's store for the instances this command starts.
    #[arg(long, env = "SAGAPLANE_DATABASE_URL")]
    database: Option<String>,
    /// The sagaplane binary (default: next to this one).
    #[arg(long)]
    sagaplane: Option<PathBuf>,
    /// The services' databases: `sqlite` (files in the work directory) or a PostgreSQL URL
    /// whose role may create databases (`shop_orders`, `shop_inventory`, `shop_payments`).
    #[arg(long, default_value = "sqlite")]
    services_db: String,
    #[arg(long, default_value_t = 1_000)]
    orders: usize,
    /// Orders being placed at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Kill the inventory service at 30% (restarted a second later) and SIGKILL one
    /// orchestrator at 50% (when this command started more than one).
    #[arg(long)]
    faults: bool,
    /// Share of charges the payment service declines.
    #[arg(long, default_value_t = 0.05)]
    decline_rate: f64,
    /// Where the services' files and logs go.
    #[arg(long, default_value = ".shop")]
    work_dir: PathBuf,
    #[command(flatten)]
    stock: Stock,
}

/// A child process, killed when dropped.
struct Process {
    child: Child,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_listening(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not start listening on port {port}")
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::process::Stdio> {
    Ok(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log")))?.into())
}

/// One participant service: its port and database, so it can be restarted as it was.
struct ServiceProcess {
    kind: Kind,
    port: u16,
    database: String,
    process: Option<Process>,
}

impl ServiceProcess {
    async fn start(&mut self, args: &Args) -> anyhow::Result<()> {
        let name = format!("{:?}", self.kind).to_lowercase();
        let child = Command::new(std::env::current_exe()?)
            .args(["service", &name, "--listen", &format!("127.0.0.1:{}", self.port), "--database", &self.database])
            .args(["--decline-rate", &args.decline_rate.to_string()])
            .args(["--skus", &args.stock.skus.to_string(), "--units", &args.stock.units.to_string()])
            .args([
                "--customers",
                &args.stock.customers.to_string(),
                "--balance-cents",
                &args.stock.balance_cents.to_string(),
            ])
            .stdout(log_file(&args.work_dir, &name)?)
            .stderr(log_file(&args.work_dir, &name)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name} service"))?;
        self.process = Some(Process { child });
        wait_listening(self.port, &name).await
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Where orders go: Sagaplane instances' base URLs and the admin token.
struct Api {
    client: reqwest::Client,
    urls: Vec<String>,
    token: String,
    /// Instances known dead (SIGKILLed): skipped.
    dead: std::sync::Mutex<Vec<usize>>,
}

impl Api {
    fn live(&self) -> Vec<usize> {
        let dead = self.dead.lock().map(|d| d.clone()).unwrap_or_default();
        (0..self.urls.len()).filter(|i| !dead.contains(i)).collect()
    }

    async fn send(
        &self,
        instance: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request =
            self.client.request(method, format!("{}{path}", self.urls[instance])).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let value = response.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// GET on any live instance.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        for instance in self.live() {
            if let Ok((200, value)) = self.send(instance, reqwest::Method::GET, path, None).await {
                return Ok(value);
            }
        }
        bail!("no instance answered GET {path}")
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.work_dir)?;
    let mut services = Vec::new();
    for kind in [Kind::Orders, Kind::Inventory, Kind::Payments] {
        let database = service_database(&args, kind).await?;
        let mut service = ServiceProcess { kind, port: free_port()?, database, process: None };
        service.start(&args).await?;
        services.push(service);
    }
    let (api, mut orchestrators) = orchestrators(&args).await?;
    let api = Arc::new(api);
    put_definition(&api, &services).await?;
    println!("placing {} orders through {} Sagaplane instance(s)", args.orders, api.urls.len());
    let started = Instant::now();
    let placed = Arc::new(AtomicUsize::new(0));
    // Keys unique to this run: a second run on the same database must place new orders, not
    // get the first run's back as replays.
    let run_id = format!("{:016x}", rand::random::<u64>());
    let placing =
        tokio::spawn(place_orders(api.clone(), run_id, args.orders, args.concurrency, args.stock, placed.clone()));
    if args.faults {
        inject_faults(&args, &api, &mut services, &mut orchestrators, &placed).await?;
    }
    let ids = placing.await??;
    println!("{} orders placed in {:.1} s; waiting for every saga to end", ids.len(), started.elapsed().as_secs_f64());
    let statuses = wait_for_the_end(&api, &ids).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for status in statuses.values() {
        *counts.entry(status.as_str()).or_default() += 1;
    }
    println!(
        "{} orders ended in {elapsed:.1} s ({:.0} orders/s): {counts:?}",
        statuses.len(),
        statuses.len() as f64 / elapsed
    );
    let databases: Vec<String> = services.iter().map(|s| s.database.clone()).collect();
    drop(orchestrators);
    drop(services);
    crate::reconcile::reconcile(&databases, args.stock, &statuses).await
}

async fn service_database(args: &Args, kind: Kind) -> anyhow::Result<String> {
    let name = format!("shop_{}", format!("{kind:?}").to_lowercase());
    if args.services_db == "sqlite" {
        let path = args.work_dir.join(format!("{name}.db"));
        let _ = std::fs::remove_file(&path);
        return Ok(format!("sqlite://{}", path.display()));
    }
    // A fresh PostgreSQL database per service, made through the server's `postgres` database.
    let base = args.services_db.trim_end_matches('/');
    let (server, _) = base.rsplit_once('/').context("--services-db: postgres://user:password@host:port/database")?;
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&format!("{server}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    Ok(format!("{server}/{name}"))
}

/// The Sagaplane to use: the one given, or `--orchestrators` instances started here.
async fn orchestrators(args: &Args) -> anyhow::Result<(Api, Vec<Option<Process>>)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    if let Some(url) = &args.url {
        let token = args.token.clone().context("--token (or SAGAPLANE_TOKEN) goes with --url")?;
        return Ok((
            Api { client, urls: vec![url.trim_end_matches('/').to_string()], token, dead: Default::default() },
            Vec::new(),
        ));
    }
    let database =
        args.database.clone().context("--database (or SAGAPLANE_DATABASE_URL), or --url of a running Sagaplane")?;
    let binary = match &args.sagaplane {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("sagaplane"),
    };
    let token = format!("shop-{}", rand::random::<u64>());
    let mut urls = Vec::new();
    let mut processes = Vec::new();
    for n in 0..args.orchestrators {
        let port = free_port()?;
        let child = Command::new(&binary)
            .arg("server")
            .env("SAGAPLANE_DATABASE_URL", &database)
            .env("SAGAPLANE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SAGAPLANE_ADMIN_TOKEN", &token)
            .env("SAGAPLANE_WORKER_ID", format!("shop-{n}"))
            .env("SAGAPLANE_LEASE_TTL", "5s")
            .env("SAGAPLANE_LOG_FORMAT", "json")
            .stdout(log_file(&args.work_dir, &format!("sagaplane-{n}"))?)
            .stderr(log_file(&args.work_dir, &format!("sagaplane-{n}"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        processes.push(Some(Process { child }));
        wait_listening(port, "sagaplane").await?;
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    Ok((Api { client, urls, token, dead: Default::default() }, processes))
}

/// The `order` saga, with the services' endpoints written in.
fn definition(services: &[ServiceProcess]) -> Value {
    let endpoint =
        |kind: Kind| services.iter().find(|s| s.kind == kind).map(ServiceProcess::endpoint).unwrap_or_default();
    let order = json!({"customer": "{{ input.customer }}", "sku": "{{ input.sku }}", "qty": "{{ input.qty }}", "amount_cents": "{{ input.amount_cents }}"});
    let grpc =
        |kind: Kind, service: &str| json!({"grpc": {"endpoint": endpoint(kind), "service": service, "input": order}});
    json!({
        "defaults": {
            "timeout": "5s",
            "retry": {"max_attempts": 10, "initial_interval": "200ms", "multiplier": 2.0, "max_interval": "5s"},
            "compensation_retry": {"max_attempts": 30, "initial_interval": "200ms", "multiplier": 2.0, "max_interval": "5s"}
        },
        "steps": [
            {"name": "create_order", "action": grpc(Kind::Orders, "orders"), "compensation": grpc(Kind::Orders, "orders")},
            {"name": "reserve_stock", "action": grpc(Kind::Inventory, "inventory"), "compensation": grpc(Kind::Inventory, "inventory")},
            {"name": "charge", "pivot": true, "action": grpc(Kind::Payments, "payments"), "compensation": grpc(Kind::Payments, "payments")},
            {"name": "confirm", "action": grpc(Kind::Orders, "orders")}
        ]
    })
}

async fn put_definition(api: &Api, services: &[ServiceProcess]) -> anyhow::Result<()> {
    for _ in 0..100 {
        match api.send(0, reqwest::Method::PUT, "/v1/definitions/order", Some(&definition(services))).await {
            Ok((200 | 201, _)) => return Ok(()),
            Ok((status, body)) if status != 503 => bail!("PUT /v1/definitions/order answered {status}: {body}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("Sagaplane did not become ready")
}

/// Places `count` orders, `concurrency` at once, each with its own `Idempotency-Key`, so an
/// order sent to an instance that died is placed again on another without a second saga.
async fn place_orders(
    api: Arc<Api>,
    run_id: String,
    count: usize,
    concurrency: usize,
    stock: Stock,
    placed: Arc<AtomicUsize>,
) -> anyhow::Result<Vec<String>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..count {
        let permit = permits.clone().acquire_owned().await?;
        let api = api.clone();
        let placed = placed.clone();
        let key = format!("order-{run_id}-{n}");
        tasks.spawn(async move {
            let _permit = permit;
            let sku = n % stock.skus.max(1) as usize;
            let qty = 1 + (n % 3) as i64;
            let input = json!({"customer": format!("c-{}", n % stock.customers.max(1) as usize), "sku": format!("sku-{sku}"),
                               "qty": qty, "amount_cents": qty * 100 * (1 + sku as i64)});
            let body = json!({"definition": "order", "input": input});
            let result = place_one(&api, n, &key, &body).await;
            placed.fetch_add(1, Ordering::SeqCst);
            result
        });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(result) = tasks.join_next().await {
        ids.push(result??);
    }
    Ok(ids)
}

async fn place_one(api: &Api, n: usize, key: &str, body: &Value) -> anyhow::Result<String> {
    for attempt in 0..100usize {
        let live = api.live();
        let instance = live[(n + attempt) % live.len()];
        let request = api
            .client
            .post(format!("{}/v1/sagas", api.urls[instance]))
            .bearer_auth(&api.token)
            .header("Idempotency-Key", key)
            .json(body);
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let saga: Value = response.json().await?;
                return saga["id"].as_str().map(str::to_string).context("a saga without an id");
            }
            Ok(response) if response.status().is_client_error() => {
                bail!("order {n} refused: {} {}", response.status(), response.text().await.unwrap_or_default())
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("order {n} could not be placed")
}

async fn inject_faults(
    args: &Args,
    api: &Api,
    services: &mut [ServiceProcess],
    orchestrators: &mut [Option<Process>],
    placed: &AtomicUsize,
) -> anyhow::Result<()> {
    let at = |share: f64| (args.orders as f64 * share) as usize;
    while placed.load(Ordering::SeqCst) < at(0.3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(inventory) = services.iter_mut().find(|s| s.kind == Kind::Inventory) {
        println!("fault: SIGKILL the inventory service, restart it in 1 s");
        if let Some(mut process) = inventory.process.take() {
            process.child.kill().await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        inventory.start(args).await?;
    }
    while placed.load(Ordering::SeqCst) < at(0.5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if orchestrators.len() > 1 {
        println!("fault: SIGKILL orchestrator 0");
        if let Some(mut process) = orchestrators[0].take() {
            process.child.kill().await?;
        }
        if let Ok(mut dead) = api.dead.lock() {
            dead.push(0);
        }
    }
    Ok(())
}

/// Waits until none of the orders' sagas is unfinished; their final statuses by id.
async fn wait_for_the_end(api: &Api, ids: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut unfinished = 0;
        for status in ["PENDING", "EXECUTING", "COMPENSATING"] {
            let page = api.get(&format!("/v1/sagas?definition=order&status={status}&limit=1")).await?;
            unfinished += page["items"].as_array().map_or(0, Vec::len);
        }
        if unfinished == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("sagas still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut statuses = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/sagas?definition=order&limit=500&cursor={cursor}"),
            None => "/v1/sagas?definition=order&limit=500".to_string(),
        };
        let page = api.get(&path).await?;
        for saga in page["items"].as_array().into_iter().flatten() {
            if let (Some(id), Some(status)) = (saga["id"].as_str(), saga["status"].as_str()) {
                statuses.insert(id.to_string(), status.to_string());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    let placed: std::collections::BTreeSet<&String> = ids.iter().collect();
    statuses.retain(|id, _| placed.contains(id));
    if statuses.len() != placed.len() {
        bail!("{} orders placed, but Sagaplane lists {} of their sagas", placed.len(), statuses.len());
    }
    Ok(statuses)
}
