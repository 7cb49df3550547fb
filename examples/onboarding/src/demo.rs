//! `onboarding demo`: the services and the CRM as child processes, `tenant.provision` and
//! `tenant.deprovision` extended with the identity provider, cloud and DR steps, one customer
//! onboarded per tier, and the drills — each outcome checked from the CRM's and each service's
//! point of view, and from the saga's history.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::service::Kind;

/// The example's webhook secret (start Sagaplane with it as `SAGAPLANE_CRM_WEBHOOK_SECRET`).
pub const WEBHOOK_SECRET: &str = "whsec_c2FnYXBsYW5lLWV4YW1wbGUtY3JtLXdlYmhvb2stc2VjcmV0";
/// The example's callback secret (`SAGAPLANE_CRM_CALLBACK_SECRET`).
pub const CALLBACK_SECRET: &str = "whsec_c2FnYXBsYW5lLWV4YW1wbGUtY3JtLWNhbGxiYWNrLXNlY3JldA==";

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "SAGAPLANE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token `sagaplane dev` prints.
    #[arg(long, env = "SAGAPLANE_TOKEN")]
    token: String,
    /// Ports of the identity provider, cloud, DR and CRM services (the CRM's is the one in
    /// Sagaplane's `SAGAPLANE_CRM_CALLBACK_URL`).
    #[arg(long, default_value = "7101,7102,7103,7104", value_delimiter = ',')]
    ports: Vec<u16>,
    #[arg(long, default_value = WEBHOOK_SECRET)]
    webhook_secret: String,
    #[arg(long, default_value = CALLBACK_SECRET)]
    callback_secret: String,
    /// Tenant ids get this suffix, so the demo can run again against the same Sagaplane.
    #[arg(long, default_value = "")]
    suffix: String,
    /// Where the services keep their state (emptied at the start).
    #[arg(long, default_value = ".onboarding")]
    state_dir: std::path::PathBuf,
}

struct Demo {
    args: Args,
    client: reqwest::Client,
    children: Vec<(String, Child)>,
}

impl Demo {
    fn port(&self, index: usize) -> u16 {
        self.args.ports.get(index).copied().unwrap_or(7101 + index as u16)
    }

    fn base(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.port(index))
    }

    async fn start(&mut self, name: &str, args: Vec<String>, port: u16) -> anyhow::Result<()> {
        let child = Command::new(std::env::current_exe()?)
            .args(&args)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.children.push((name.to_string(), child));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("{name} did not start on port {port}")
    }

    async fn start_service(&mut self, kind: Kind, extra: &[&str]) -> anyhow::Result<()> {
        let index = [Kind::Idp, Kind::Cloud, Kind::Dr].iter().position(|k| *k == kind).unwrap_or(0);
        let port = self.port(index);
        let name = format!("{kind:?}").to_lowercase();
        let state_file = self.args.state_dir.join(format!("{name}.json"));
        let mut args = vec!["service".to_string(), name.clone(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(["--state-file".to_string(), state_file.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start(&name, args, port).await
    }

    async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(index) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(index);
            child.kill().await?;
        }
        Ok(())
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request =
            self.client.request(method.clone(), format!("{}{path}", self.args.url)).bearer_auth(&self.args.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{method} {path} answered {status}: {value}");
        Ok(value)
    }

    async fn service_state(&self, index: usize) -> anyhow::Result<Value> {
        Ok(self.client.get(format!("{}/state", self.base(index))).send().await?.json().await?)
    }

    async fn deal_won(&self, tenant: &str, tier: &str) -> anyhow::Result<()> {
        let body = json!({"name": format!("{tenant} Ltd"), "tier": tier});
        let response = self.client.post(format!("{}/deals/{tenant}/won", self.base(3))).json(&body).send().await?;
        ensure!(
            response.status().as_u16() == 202,
            "the CRM's webhook answered {}: {}",
            response.status(),
            response.text().await?
        );
        Ok(())
    }

    /// Waits for the tenant to reach one of `statuses`.
    async fn tenant_reaches(&self, tenant: &str, statuses: &[&str], within: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let record = self.api(reqwest::Method::GET, &format!("/v1/tenants/{tenant}"), None).await?;
            if statuses.contains(&record["status"].as_str().unwrap_or_default()) {
                return Ok(record);
            }
            ensure!(Instant::now() < deadline, "tenant {tenant} is {} after {within:?}", record["status"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The outcome callbacks the CRM accepted for `tenant`.
    async fn crm_outcomes(&self, tenant: &str) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.service_state(3).await?;
            let types: Vec<String> = state["outcomes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["tenant_id"] == tenant)
                .filter_map(|o| o["type"].as_str().map(str::to_string))
                .collect();
            if !types.is_empty() || Instant::now() > deadline {
                return Ok(types);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The saga's history, as `kind step` lines.
    async fn history(&self, saga_id: &str) -> anyhow::Result<Vec<String>> {
        let events = self.api(reqwest::Method::GET, &format!("/v1/sagas/{saga_id}/events?limit=500"), None).await?;
        Ok(events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{} {}", e["type"].as_str().unwrap_or_default(), e["step"].as_str().unwrap_or_default()))
            .collect())
    }
}

/// One of our steps: POST to a service, undone by its delete.
fn step(name: &str, base: &str, things: &str, timeout: &str, compensation_attempts: u32) -> Value {
    json!({
        "name": name,
        "action": {"http": {"method": "POST", "url": format!("{base}/{things}"),
                            "body": {"tenant_id": "{{ tenant_id }}", "tier": "{{ input.tier }}"}}},
        "compensation": {"http": {"method": "POST", "url": format!("{base}/{things}/{{{{ tenant_id }}}}/delete")}},
        "timeout": timeout,
        "retry": {"max_attempts": 4, "initial_interval": "200ms", "multiplier": 2.0, "max_interval": "2s"},
        "compensation_retry": {"max_attempts": compensation_attempts, "initial_interval": "500ms", "multiplier": 1.5, "max_interval": "2s"}
    })
}

/// An offboarding step: the service's delete, as an action.
fn removal(name: &str, base: &str, things: &str) -> Value {
    json!({"name": name, "action": {"http": {"method": "POST", "url": format!("{base}/{things}/{{{{ tenant_id }}}}/delete")}}})
}

/// The steps the demo adds to `tenant.provision` and to `tenant.deprovision`.
const PROVISION_STEPS: [&str; 3] = ["idp", "cloud", "dr"];
const DEPROVISION_STEPS: [&str; 3] = ["dr_stop", "cloud_delete", "idp_delete"];

/// The latest version of built-in `name` without the demo's `ours` steps (left by an earlier
/// run that was killed before it could restore them).
async fn without_ours(demo: &Demo, name: &str, ours: &[&str]) -> anyhow::Result<Value> {
    let mut definition =
        demo.api(reqwest::Method::GET, &format!("/v1/definitions/{name}"), None).await?["definition"].clone();
    let steps = definition["steps"].as_array_mut().with_context(|| format!("{name} has steps"))?;
    steps.retain(|s| !ours.contains(&s["name"].as_str().unwrap_or_default()));
    Ok(definition)
}

/// Extends `tenant.provision` (identity provider, cloud, DR before activation) and
/// `tenant.deprovision` (the same, removed in reverse, before the storage is dropped).
async fn extend_definitions(demo: &Demo) -> anyhow::Result<()> {
    let mut provision = without_ours(demo, "tenant.provision", &PROVISION_STEPS).await?;
    let steps = provision["steps"].as_array_mut().context("tenant.provision has steps")?;
    let activate = steps.iter().position(|s| s["name"] == "activate").context("tenant.provision has activate")?;
    let ours = [
        step("idp", &demo.base(0), Kind::Idp.things(), "1s", 40),
        step("cloud", &demo.base(1), Kind::Cloud.things(), "2s", 40),
        step("dr", &demo.base(2), Kind::Dr.things(), "2s", 120),
    ];
    for (offset, step) in ours.into_iter().enumerate() {
        steps.insert(activate + offset, step);
    }
    demo.api(reqwest::Method::PUT, "/v1/definitions/tenant.provision", Some(provision)).await?;
    let mut deprovision = without_ours(demo, "tenant.deprovision", &DEPROVISION_STEPS).await?;
    let steps = deprovision["steps"].as_array_mut().context("tenant.deprovision has steps")?;
    let drop = steps.iter().position(|s| s["name"] == "drop_storage").context("tenant.deprovision has drop_storage")?;
    let ours = [
        removal("dr_stop", &demo.base(2), Kind::Dr.things()),
        removal("cloud_delete", &demo.base(1), Kind::Cloud.things()),
        removal("idp_delete", &demo.base(0), Kind::Idp.things()),
    ];
    for (offset, step) in ours.into_iter().enumerate() {
        steps.insert(drop + offset, step);
    }
    demo.api(reqwest::Method::PUT, "/v1/definitions/tenant.deprovision", Some(deprovision)).await?;
    Ok(())
}

/// Puts the two tenant sagas back as they were before the demo (a new version of each without
/// the demo's steps), so tenants created once the demo's services are gone still onboard.
/// Sagas already running keep the version they started with.
async fn restore_definitions(demo: &Demo) -> anyhow::Result<()> {
    for (name, ours) in [("tenant.provision", PROVISION_STEPS), ("tenant.deprovision", DEPROVISION_STEPS)] {
        let definition = without_ours(demo, name, &ours).await?;
        demo.api(reqwest::Method::PUT, &format!("/v1/definitions/{name}"), Some(definition)).await?;
    }
    Ok(())
}

fn has(state: &Value, tenant: &str) -> bool {
    state["resources"].get(tenant).is_some()
}

fn deleted(state: &Value, tenant: &str) -> bool {
    state["deleted"].as_array().into_iter().flatten().any(|t| t == tenant)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut demo = Demo {
        args,
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        children: Vec::new(),
    };
    let mut suffix = demo.args.suffix.clone();
    // Run again against the same Sagaplane: new customers, not the first run's.
    if demo.api(reqwest::Method::GET, &format!("/v1/tenants/acme-silo{suffix}"), None).await.is_ok() {
        suffix = format!("{suffix}-{:04x}", std::process::id() % 0x10000);
        println!("the first run's customers exist; this run's ids end in {suffix}");
    }
    let _ = std::fs::remove_dir_all(&demo.args.state_dir);
    std::fs::create_dir_all(&demo.args.state_dir)?;
    let id = |name: &str| format!("{name}{suffix}");
    for kind in [Kind::Idp, Kind::Cloud, Kind::Dr] {
        demo.start_service(kind, &[]).await?;
    }
    let crm_args = vec![
        "crm".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", demo.port(3)),
        "--sagaplane".into(),
        demo.args.url.clone(),
        "--webhook-secret".into(),
        demo.args.webhook_secret.clone(),
        "--callback-secret".into(),
        demo.args.callback_secret.clone(),
    ];
    let crm_port = demo.port(3);
    demo.start("crm", crm_args, crm_port).await?;
    let started = Instant::now();
    extend_definitions(&demo).await?;
    println!("tenant.provision and tenant.deprovision extended with the identity provider, cloud and DR steps");
    let outcome = tokio::select! {
        outcome = drills(&mut demo, &id) => outcome,
        _ = stop_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let restored = restore_definitions(&demo).await;
    match &restored {
        Ok(()) => println!("tenant.provision and tenant.deprovision restored without the demo's steps"),
        Err(e) => eprintln!(
            "could not restore tenant.provision and tenant.deprovision: {e:#}; run the demo again to restore them"
        ),
    }
    outcome?;
    restored?;
    println!("every onboarding outcome and drill as expected, in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// One customer per tier, then the drills; each outcome checked.
async fn drills(demo: &mut Demo, id: &impl Fn(&str) -> String) -> anyhow::Result<()> {
    // One customer per tier, from the CRM's deal to ACTIVE, and the CRM told.
    for tier in ["silo", "bridge", "pooled"] {
        let tenant = id(&format!("acme-{tier}"));
        demo.deal_won(&tenant, tier).await?;
        let record = demo
            .tenant_reaches(&tenant, &["ACTIVE", "PROVISION_ERROR", "MIGRATION_ERROR"], Duration::from_secs(60))
            .await?;
        ensure!(record["status"] == "ACTIVE", "{tenant}: {record}");
        for index in 0..3 {
            let state = demo.service_state(index).await?;
            ensure!(has(&state, &tenant), "service {index} has nothing for {tenant}: {state}");
        }
        let idp = demo.service_state(0).await?;
        let outcomes = demo.crm_outcomes(&tenant).await?;
        ensure!(outcomes == ["tenant.activated"], "the CRM got {outcomes:?} for {tenant}");
        println!("{tier}: {tenant} ACTIVE; realm {}; the CRM got tenant.activated", idp["resources"][&tenant]["realm"]);
    }

    // Drill: the identity provider is slow — the step times out and is retried with the same key.
    demo.stop("idp").await?;
    demo.start_service(Kind::Idp, &["--slow-first", "2", "--slow-ms", "2500"]).await?;
    let tenant = id("slowco");
    demo.deal_won(&tenant, "pooled").await?;
    let record = demo.tenant_reaches(&tenant, &["ACTIVE", "PROVISION_ERROR"], Duration::from_secs(60)).await?;
    ensure!(record["status"] == "ACTIVE", "{tenant}: {record}");
    let idp = demo.service_state(0).await?;
    let keys: Vec<&Value> = idp["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["create"] == tenant.as_str())
        .map(|r| &r["idempotency_key"])
        .collect();
    ensure!(
        keys.len() >= 3 && keys.windows(2).all(|pair| pair[0] == pair[1]),
        "identity provider requests for {tenant}: {keys:?}"
    );
    println!(
        "drill, identity provider slow: {} attempts, one idempotency key ({}), one realm; {tenant} ACTIVE",
        keys.len(),
        keys[0]
    );

    // Drill: DR is down — compensation in reverse undoes the cloud stack and the realm, and the
    // CRM is told the provisioning failed.
    demo.stop("dr").await?;
    let tenant = id("drfail");
    demo.deal_won(&tenant, "silo").await?;
    let compensating = Instant::now() + Duration::from_secs(60);
    let saga_id = loop {
        let status = demo.api(reqwest::Method::GET, &format!("/v1/tenants/{tenant}/provisioning-status"), None).await?;
        if status["saga_status"] == "COMPENSATING" {
            break status["saga_id"].as_str().unwrap_or_default().to_string();
        }
        ensure!(Instant::now() < compensating, "{tenant}'s provisioning never started compensating: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("drill, DR down: {tenant}'s provisioning is compensating; DR comes back");
    demo.start_service(Kind::Dr, &[]).await?;
    let record = demo.tenant_reaches(&tenant, &["PROVISION_ERROR", "ACTIVE"], Duration::from_secs(120)).await?;
    ensure!(record["status"] == "PROVISION_ERROR", "{tenant}: {record}");
    let (idp, cloud) = (demo.service_state(0).await?, demo.service_state(1).await?);
    ensure!(!has(&idp, &tenant) && deleted(&idp, &tenant), "identity provider still holds {tenant}: {idp}");
    ensure!(!has(&cloud, &tenant) && deleted(&cloud, &tenant), "cloud still holds {tenant}: {cloud}");
    let undone: Vec<String> =
        demo.history(&saga_id).await?.into_iter().filter(|e| e.starts_with("step_compensated")).collect();
    ensure!(
        undone.iter().position(|e| e.ends_with(" cloud")) < undone.iter().position(|e| e.ends_with(" idp")),
        "compensation order: {undone:?}"
    );
    let outcomes = demo.crm_outcomes(&tenant).await?;
    ensure!(outcomes == ["tenant.provision_failed"], "the CRM got {outcomes:?} for {tenant}");
    println!("drill, DR down: compensated in reverse ({}), the CRM got tenant.provision_failed", undone.join(", "));

    // Drill: offboarding — the DR replication, the cloud stack and the realm go, in reverse.
    let tenant = id("acme-silo");
    let deleting = demo.api(reqwest::Method::DELETE, &format!("/v1/tenants/{tenant}"), None).await?;
    demo.tenant_reaches(&tenant, &["DELETED"], Duration::from_secs(60)).await?;
    for index in 0..3 {
        let state = demo.service_state(index).await?;
        ensure!(!has(&state, &tenant) && deleted(&state, &tenant), "service {index} still holds {tenant}: {state}");
    }
    let saga_id = deleting["saga_id"].as_str().unwrap_or_default();
    let order: Vec<String> =
        demo.history(saga_id).await?.into_iter().filter(|e| e.starts_with("step_succeeded")).collect();
    println!("drill, offboarding: {tenant} DELETED; {}", order.join(", "));
    Ok(())
}
