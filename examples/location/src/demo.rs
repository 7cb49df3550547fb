//! `location demo`: two pooled tenants with their users, subscriptions and tracking sessions, a
//! third party that fails while updates are posted and then recovers — and the checks: sessions
//! listed and revoked, nothing cross-tenant (row-level security, deliveries), nothing lost (every
//! update of a live session delivered), nothing sent for a session that ended.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "SAGAPLANE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "SAGAPLANE_TOKEN")]
    token: String,
    /// The tenants' pooled storage, as Sagaplane's admin connection reaches it.
    #[arg(long, env = "SAGAPLANE_TENANT_DATABASE_URL")]
    tenant_database: String,
    /// Ports of the app and of the third party.
    #[arg(long, default_value = "7201,7202", value_delimiter = ',')]
    ports: Vec<u16>,
}

struct Demo {
    args: Args,
    http: reqwest::Client,
    children: Vec<Child>,
}

impl Demo {
    fn app(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.ports.first().copied().unwrap_or(7201))
    }

    fn third(&self) -> String {
        format!("http://127.0.0.1:{}", self.args.ports.get(1).copied().unwrap_or(7202))
    }

    async fn spawn(&mut self, args: &[String], url: String) -> anyhow::Result<()> {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.http.get(format!("{url}/nothing")).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{args:?} did not start")
    }

    /// A request with a bearer token; the status and the JSON answer.
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = self.http.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| url.clone())?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn sagaplane(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.call(method.clone(), format!("{}{path}", self.args.url), token, body).await?;
        ensure!((200..300).contains(&status), "{method} {path} answered {status}: {value}");
        Ok(value)
    }

    /// A pooled tenant, active, with a subscription of its own to the third party.
    async fn tenant(&self, id: &str) -> anyhow::Result<()> {
        let admin = self.args.token.clone();
        self.sagaplane(
            reqwest::Method::POST,
            "/v1/tenants",
            &admin,
            Some(json!({"id": id, "name": id, "tier": "pooled"})),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tenant = self.sagaplane(reqwest::Method::GET, &format!("/v1/tenants/{id}"), &admin, None).await?;
            match tenant["status"].as_str() {
                Some("ACTIVE") => break,
                Some("PROVISIONING" | "MIGRATING") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => bail!("tenant {id}: {tenant}"),
            }
        }
        let key = self
            .sagaplane(
                reqwest::Method::POST,
                &format!("/v1/tenants/{id}/api-keys"),
                &admin,
                Some(json!({"name": "location-app"})),
            )
            .await?;
        let key = key["token"].as_str().context("an API key token")?.to_string();
        let subscription = json!({"url": format!("{}/hooks/{id}", self.third()), "events": ["location.updated"]});
        let created = self.sagaplane(reqwest::Method::POST, "/v1/subscriptions", &key, Some(subscription)).await?;
        ensure!(created["tenant_id"] == id, "a tenant key's subscription is the tenant's: {created}");
        let secret = created["secret"].as_str().context("the subscription's secret")?;
        self.call(reqwest::Method::POST, format!("{}/secrets/{id}", self.third()), "", Some(json!({"secret": secret})))
            .await?;
        Ok(())
    }

    async fn user(&self, tenant: &str, email: &str) -> anyhow::Result<String> {
        let body = json!({"email": email, "password": "correct horse"});
        let (status, created) = self
            .call(
                reqwest::Method::POST,
                format!("{}/tenants/{tenant}/users", self.app()),
                &self.args.token,
                Some(body.clone()),
            )
            .await?;
        ensure!(status == 201, "creating {email}: {status} {created}");
        self.login(tenant, email).await
    }

    async fn login(&self, tenant: &str, email: &str) -> anyhow::Result<String> {
        let body = json!({"email": email, "password": "correct horse"});
        let (status, session) =
            self.call(reqwest::Method::POST, format!("{}/tenants/{tenant}/login", self.app()), "", Some(body)).await?;
        ensure!(status == 201, "login {email}: {status} {session}");
        Ok(session["token"].as_str().context("a session token")?.to_string())
    }

    async fn track(&self, tenant: &str, token: &str, duration: Option<&str>) -> anyhow::Result<String> {
        let body = duration.map(|d| json!({"duration": d}));
        let (status, tracking) =
            self.call(reqwest::Method::POST, format!("{}/tenants/{tenant}/tracking", self.app()), token, body).await?;
        ensure!(status == 201, "tracking: {status} {tracking}");
        Ok(tracking["id"].as_str().context("a tracking id")?.to_string())
    }

    async fn update(&self, tenant: &str, token: &str, tracking: &str, n: u32) -> anyhow::Result<(u16, Value)> {
        let body = json!({"lat": 59.9 + f64::from(n) / 100.0, "lon": 10.7});
        self.call(
            reqwest::Method::POST,
            format!("{}/tenants/{tenant}/tracking/{tracking}/locations", self.app()),
            token,
            Some(body),
        )
        .await
    }

    async fn received(&self) -> anyhow::Result<Vec<Value>> {
        let (_, value) = self.call(reqwest::Method::GET, format!("{}/received", self.third()), "", None).await?;
        Ok(value["items"].as_array().cloned().unwrap_or_default())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut demo =
        Demo { args, http: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?, children: Vec::new() };
    let started = Instant::now();
    let suffix = format!("{:04x}", std::process::id() % 0x10000);
    let (north, south) = (format!("north-{suffix}"), format!("south-{suffix}"));
    let third_port = demo.args.ports.get(1).copied().unwrap_or(7202);
    demo.spawn(&["third-party".into(), "--listen".into(), format!("127.0.0.1:{third_port}")], demo.third()).await?;
    let app_port = demo.args.ports.first().copied().unwrap_or(7201);
    let app_args = vec![
        "app".into(),
        "--listen".into(),
        format!("127.0.0.1:{app_port}"),
        "--sagaplane".into(),
        demo.args.url.clone(),
        "--token".into(),
        demo.args.token.clone(),
        "--tenant-database".into(),
        demo.args.tenant_database.clone(),
    ];
    demo.spawn(&app_args, demo.app()).await?;
    demo.tenant(&north).await?;
    demo.tenant(&south).await?;
    println!("tenants {north} and {south}: pooled, active, each with its own subscription to the third party");

    // Sessions: one per login, listed for the user, revocable.
    let alice = demo.user(&north, "alice@north.example").await?;
    let alice_phone = demo.login(&north, "alice@north.example").await?;
    let (_, listed) =
        demo.call(reqwest::Method::GET, format!("{}/tenants/{north}/sessions", demo.app()), &alice, None).await?;
    let sessions = listed["items"].as_array().cloned().unwrap_or_default();
    ensure!(sessions.len() == 2, "two logins, two sessions: {listed}");
    let phone = sessions.iter().find(|s| s["current"] == false).context("the other session")?;
    let path = format!("{}/tenants/{north}/sessions/{}/revoke", demo.app(), phone["id"].as_str().unwrap_or_default());
    ensure!(demo.call(reqwest::Method::POST, path, &alice, None).await?.0 == 200, "revoking");
    let (status, _) =
        demo.call(reqwest::Method::GET, format!("{}/tenants/{north}/sessions", demo.app()), &alice_phone, None).await?;
    ensure!(status == 401, "a revoked session is refused, got {status}");
    println!("sessions: two logins listed for alice, one revoked and refused from then on");

    // The third party is down while both tenants post updates; north's session ends meanwhile.
    let bob = demo.user(&south, "bob@south.example").await?;
    demo.call(reqwest::Method::POST, format!("{}/control/fail", demo.third()), "", None).await?;
    let short = demo.track(&north, &alice, Some("4s")).await?;
    let long = demo.track(&south, &bob, None).await?;
    let ended_at = Instant::now() + Duration::from_secs(4);
    for n in 0..3 {
        ensure!(demo.update(&north, &alice, &short, n).await?.0 == 201, "north update {n}");
        ensure!(demo.update(&south, &bob, &long, n).await?.0 == 201, "south update {n}");
    }
    let (status, _) = demo.update(&north, &bob, &short, 9).await?;
    ensure!(status == 401 || status == 404, "bob cannot post to north's session: {status}");
    tokio::time::sleep(ended_at.saturating_duration_since(Instant::now()) + Duration::from_millis(500)).await;
    let (status, _) = demo.update(&north, &alice, &short, 3).await?;
    ensure!(status == 409, "an update after the session ended is refused: {status}");
    println!("third party down: 3 updates each posted; north's 4 s session ended, a later update refused");
    demo.call(reqwest::Method::POST, format!("{}/control/recover", demo.third()), "", None).await?;

    // Nothing lost: south's three arrive. Nothing sent for the ended session: north's are dead.
    println!(
        "third party recovered; the failed deliveries wait for their next attempt \
         (SAGAPLANE_DELIVERY_RETRY_SCHEDULE: the first retry comes 1 minute after a failure by default)"
    );
    let waiting = Instant::now();
    let deadline = waiting + Duration::from_secs(90);
    let mut next_report = waiting + Duration::from_secs(10);
    let received = loop {
        let received = demo.received().await?;
        let arrived = received.iter().filter(|r| r["path_tenant"] == south.as_str()).count();
        if arrived >= 3 || Instant::now() > deadline {
            break received;
        }
        if Instant::now() >= next_report {
            println!("  … {arrived} of south's 3 updates arrived, {:.0} s waited", waiting.elapsed().as_secs_f64());
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let south_seen: Vec<&Value> = received.iter().filter(|r| r["path_tenant"] == south.as_str()).collect();
    ensure!(south_seen.len() == 3, "south's updates after the recovery: {received:?}");
    ensure!(
        received.iter().all(|r| r["data"]["tenant"] == r["path_tenant"]),
        "an update reached another tenant's hook: {received:?}"
    );
    ensure!(
        !received.iter().any(|r| r["path_tenant"] == north.as_str()),
        "an update of north's ended session was sent: {received:?}"
    );
    let north_key = demo
        .sagaplane(reqwest::Method::POST, &format!("/v1/tenants/{north}/api-keys"), &demo.args.token, Some(json!({})))
        .await?;
    let north_key = north_key["token"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let dead = demo.sagaplane(reqwest::Method::GET, "/v1/deliveries?status=dead", &north_key, None).await?;
        let items = dead["items"].as_array().cloned().unwrap_or_default();
        if items.len() >= 3 || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(
        dead.len() == 3 && dead.iter().all(|d| d["last_error"].as_str().is_some_and(|e| e.contains("expire"))),
        "north's deliveries: {dead:?}"
    );
    println!(
        "third party recovered: south's 3 updates delivered, signed, each once; north's 3 dead as expired, none sent"
    );

    // Row-level security: each tenant's users see their tenant's rows only.
    for (tenant, token) in [(&north, &alice), (&south, &bob)] {
        let (_, rows) =
            demo.call(reqwest::Method::GET, format!("{}/tenants/{tenant}/locations", demo.app()), token, None).await?;
        let items = rows["items"].as_array().cloned().unwrap_or_default();
        ensure!(items.len() == 3 && items.iter().all(|r| r["tenant_id"] == tenant.as_str()), "{tenant} reads {rows}");
    }
    println!("row-level security: each tenant's role reads its own 3 locations and no other's");
    println!(
        "nothing cross-tenant, nothing lost, nothing sent for an ended session ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
