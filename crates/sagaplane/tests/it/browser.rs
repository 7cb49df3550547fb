//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `scripts/test` installs), driven over WebDriver with `fantoccini`: paste the token, open a
//! failed saga, see its timeline and blockers, retry it and watch it complete; see a tenant's
//! migrations; replay a dead delivery. With `SAGAPLANE_SCREENSHOTS=DIR` it saves the saga and
//! tenants pages there (docs/screenshots holds the committed ones).

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use test_support::app::fast_definition;
use test_support::{eventually, App, Backend, Participant};

use crate::BIN;

const WAIT: Duration = Duration::from_secs(30);

/// A chromedriver child on a free port, killed with the test.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("port").port();
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver is not installed: run scripts/test, or apt-get install chromium chromium-driver");
    let url = format!("http://127.0.0.1:{port}");
    eventually("chromedriver to listen", WAIT, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    Driver { _child: child, url }
}

async fn browser(driver: &Driver) -> Client {
    let profile = std::env::temp_dir().join(format!("sagaplane-chromium-{}", uuid::Uuid::now_v7()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"binary": "/usr/bin/chromium", "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1300,1000", format!("--user-data-dir={}", profile.display())]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Waits until `css` matches an element whose text contains `text`, and returns that text.
async fn until_text(client: &Client, css: &str, text: &str) -> String {
    eventually(&format!("{css} to show {text:?}"), WAIT, || async {
        for element in client.find_all(Locator::Css(css)).await.ok()? {
            let shown = element.text().await.ok()?;
            if shown.contains(text) {
                return Some(shown);
            }
        }
        None
    })
    .await
}

async fn screenshot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("SAGAPLANE_SCREENSHOTS") {
        let png = client.screenshot().await.expect("a screenshot");
        std::fs::write(format!("{dir}/{name}.png"), png).expect("write the screenshot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retries_a_failed_saga_sees_migrations_and_replays_a_delivery() {
    let participant = Participant::start().await;
    participant.script("/ship", vec![(400, json!({"error": "no address"})), (200, json!({"shipped": true}))]);
    participant.script("/hook", vec![(500, json!({})), (500, json!({})), (200, json!({}))]);
    let env = [
        ("SAGAPLANE_VAR_P", participant.url.clone()),
        ("SAGAPLANE_DELIVERY_RETRY_SCHEDULE", "100ms".to_string()),
        ("SAGAPLANE_BREAKER_FAILURES", "0".to_string()),
    ];
    let app = App::spawn(BIN, Backend::Sqlite, &env).await;
    let (_, _, subscription) = app
        .send(
            app.request(reqwest::Method::POST, "/v1/subscriptions")
                .json(&json!({"url": format!("{}/hook", participant.url), "events": ["saga.failed"]})),
        )
        .await;
    app.put_definition(
        "order",
        &fast_definition(json!([
            {"name": "reserve", "action": {"builtin": "core.echo"}},
            {"name": "charge", "pivot": true, "action": {"builtin": "core.echo"}},
            {"name": "ship", "action": {"http": {"method": "POST", "url": "{{ vars.P }}/ship"}}},
        ])),
    )
    .await;
    let failed = app.start("order", json!({"sku": "A-1"})).await;
    assert_eq!(app.wait_terminal(&failed, WAIT).await["status"], "FAILED");
    app.put_definition(
        "refund",
        &fast_definition(json!([
            {"name": "reserve", "action": {"builtin": "core.echo"}, "compensation": {"builtin": "core.echo"}},
            {"name": "charge", "action": {"builtin": "core.echo"}, "compensation": {"builtin": "core.echo"}},
            {"name": "ship", "action": {"builtin": "core.fail"}},
        ])),
    )
    .await;
    app.put_definition(
        "cooling",
        &fast_definition(json!([
            {"name": "wait", "action": {"sleep": {"duration": "14d"}}},
            {"name": "extra", "when": "{{ input.plan == 'silo' }}", "action": {"builtin": "core.echo"}},
            {"name": "child", "action": {"saga": {"definition": "refund", "version": 1}}},
            {"parallel": [[{"name": "dns", "action": {"builtin": "core.echo"}}],
                          [{"name": "billing", "action": {"builtin": "core.echo"}}]]},
        ])),
    )
    .await;
    app.put_definition(
        "fanout",
        &fast_definition(json!([
            {"parallel": [[{"name": "left", "action": {"builtin": "core.echo"}}],
                          [{"name": "right", "action": {"builtin": "core.echo"}}]]},
        ])),
    )
    .await;
    let fanned = app.start("fanout", json!({})).await;
    assert_eq!(app.wait_terminal(&fanned, WAIT).await["status"], "COMPLETED");
    let compensated = app.start("refund", json!({})).await;
    assert_eq!(app.wait_terminal(&compensated, WAIT).await["status"], "COMPENSATED");
    let (status, _, _) =
        app.send(app.request(reqwest::Method::POST, "/v1/tenants").json(&json!({"id": "acme", "name": "Acme"}))).await;
    assert_eq!(status, 202);
    crate::tenants::until_status(&app, "acme", &["ACTIVE"]).await;

    let driver = chromedriver().await;
    let client = browser(&driver).await;
    client.goto(&format!("{}/ui/", app.url)).await.expect("open the dashboard");
    client
        .find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(test_support::app::TOKEN)
        .await
        .expect("type");
    client.find(Locator::Id("use-token")).await.expect("use").click().await.expect("click");
    client.goto(&format!("{}/ui/#/sagas?status=FAILED", app.url)).await.expect("failed sagas");
    until_text(&client, "table a", &failed).await;
    client.find(Locator::LinkText(&failed)).await.expect("the saga's link").click().await.expect("open it");

    // Its page: the error, the blockers (an operator), the timeline with its attempts.
    until_text(&client, "#blockers", "operator").await;
    until_text(&client, "#saga-error", "ship").await;
    let bars = client.find_all(Locator::Css("#timeline rect.bar")).await.expect("bars");
    assert!(bars.len() >= 3, "a bar per attempt: {}", bars.len());
    assert!(
        !client.find_all(Locator::Css("#timeline rect.failed")).await.expect("failed").is_empty(),
        "the failed attempt"
    );
    screenshot(&client, "saga-failed").await;
    let url = client.current_url().await.expect("url").to_string();
    assert!(
        url.contains(&format!("#/saga/{failed}")) && !url.contains(test_support::app::TOKEN),
        "shareable, no token: {url}"
    );

    // A compensated saga's timeline shows its compensations, one bar each.
    client.goto(&format!("{}/ui/#/saga/{compensated}", app.url)).await.expect("the compensated saga");
    until_text(&client, "h2", "COMPENSATED").await;
    let undone = tokio::time::timeout(WAIT, async {
        loop {
            let bars = client.find_all(Locator::Css("#timeline rect.compensation")).await.expect("bars");
            if bars.len() >= 2 {
                return bars.len();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("compensation bars in the timeline");
    assert_eq!(undone, 2, "charge and reserve undone");
    screenshot(&client, "saga-compensated").await;

    // The definitions page draws a durable timer with its duration and a conditional step dashed.
    client.goto(&format!("{}/ui/#/definitions?name=cooling", app.url)).await.expect("the definition");
    until_text(&client, "svg.diagram", "sleep 14d").await;
    let conditional = client.find_all(Locator::Css("svg.diagram rect.conditional")).await.expect("boxes");
    assert_eq!(conditional.len(), 1, "the step with a when: is dashed");
    assert_eq!(client.find_all(Locator::Css("svg.diagram rect.timer")).await.expect("boxes").len(), 1);
    // A child saga step names its definition, and undoes its child.
    until_text(&client, "svg.diagram", "saga → refund v1").await;
    until_text(&client, "svg.diagram", "undo: the child").await;
    // A parallel group: its branches named under its box.
    until_text(&client, "svg.diagram", "parallel ×2").await;
    until_text(&client, "svg.diagram", "⇉ billing").await;

    // A saga with a group: its branches' steps on one time axis, and a link to each branch.
    client.goto(&format!("{}/ui/#/saga/{fanned}", app.url)).await.expect("the saga with branches");
    until_text(&client, "#branches", "#1").await;
    let bars = client.find_all(Locator::Css("#branch-timeline rect.bar")).await.expect("bars");
    assert_eq!(bars.len(), 2, "one bar per branch step, side by side");
    screenshot(&client, "saga-branches").await;
    client.goto(&url).await.expect("back to the failed saga");
    // Its own page (the compensated one's error names `ship` too): its id and status in the title.
    until_text(&client, "h2", &failed).await;
    until_text(&client, "h2", "FAILED").await;

    // Retry, and watch it complete (the page refreshes while it runs).
    client.find(Locator::Id("retry")).await.expect("retry").click().await.expect("click retry");
    until_text(&client, "h2", "COMPLETED").await;
    until_text(&client, "#blockers", "nothing holds it").await;
    screenshot(&client, "saga").await;

    // The tenant's migrations.
    client.goto(&format!("{}/ui/#/tenants", app.url)).await.expect("tenants");
    let migrations = until_text(&client, "td .migrations", " v").await;
    let tenant: Value = app.send(app.request(reqwest::Method::GET, "/v1/tenants/acme")).await.2;
    let first = &tenant["migrations"][0];
    assert!(
        migrations.contains(&format!("{} v{}", first["service"].as_str().unwrap_or("?"), first["version"])),
        "{migrations} vs {tenant}"
    );
    screenshot(&client, "tenants").await;

    // The failed saga's event went dead after two refused attempts: replay it from the page.
    let subscription_id = subscription["id"].as_str().expect("subscription").to_string();
    eventually("a dead delivery", WAIT, || async {
        let path = format!("/v1/deliveries?subscription_id={subscription_id}&status=dead");
        let (_, _, page) = app.send(app.request(reqwest::Method::GET, &path)).await;
        (!page["items"].as_array()?.is_empty()).then_some(())
    })
    .await;
    client.goto(&format!("{}/ui/#/deliveries?status=dead", app.url)).await.expect("dead deliveries");
    until_text(&client, "td", "saga.failed").await;
    client.find(Locator::Css("button.replay")).await.expect("replay button").click().await.expect("replay");
    until_text(&client, "#message", "replay: done").await;
    eventually("the replayed delivery to succeed", WAIT, || async {
        let path = format!("/v1/deliveries?subscription_id={subscription_id}&status=succeeded");
        let (_, _, page) = app.send(app.request(reqwest::Method::GET, &path)).await;
        (!page["items"].as_array()?.is_empty()).then_some(())
    })
    .await;
    client.close().await.expect("close the browser");
}

/// On the sagas page, the filters select sagas for one bulk action: counted first, confirmed,
/// then followed with a progress bar until the job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_every_saga_a_filter_selects() {
    let app = App::spawn(BIN, Backend::Sqlite, &[]).await;
    let waiting = fast_definition(json!([
        {"name": "reserve", "action": {"builtin": "core.echo"}, "compensation": {"builtin": "core.echo"}},
        {"name": "approve", "action": {"signal": {"name": "approval"}}},
    ]));
    app.put_definition("held", &waiting).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(app.start("held", json!({})).await);
    }
    for id in &held {
        eventually("the saga waiting", WAIT, || async { (app.saga(id).await["status"] == "EXECUTING").then_some(()) })
            .await;
    }

    let driver = chromedriver().await;
    let client = browser(&driver).await;
    client.goto(&format!("{}/ui/", app.url)).await.expect("open the dashboard");
    client.find(Locator::Id("token")).await.expect("token").send_keys(test_support::app::TOKEN).await.expect("type");
    client.find(Locator::Id("use-token")).await.expect("use").click().await.expect("click");
    client.goto(&format!("{}/ui/#/sagas?definition=held&status=EXECUTING", app.url)).await.expect("held sagas");
    until_text(&client, "table a", &held[0]).await;
    client.find(Locator::Id("bulk-count")).await.expect("count").click().await.expect("click count");
    until_text(&client, "#bulk-matched", "3 sagas match").await;
    for id in &held {
        assert_eq!(app.saga(id).await["status"], "EXECUTING", "counting changes nothing");
    }
    let confirm = client.find(Locator::Id("bulk-confirm")).await.expect("confirm");
    assert_eq!(confirm.text().await.expect("text"), "cancel 3 sagas");
    confirm.click().await.expect("confirm");
    until_text(&client, "#bulk-status", "succeeded: 3 done, 0 failed of 3").await;
    let progress = client.find(Locator::Id("bulk-progress")).await.expect("the progress bar");
    assert_eq!(progress.attr("value").await.expect("value").as_deref(), Some("3"), "the bar is full");
    screenshot(&client, "bulk-cancel").await;
    for id in &held {
        assert_eq!(app.wait_terminal(id, WAIT).await["status"], "COMPENSATED");
    }
    client.close().await.expect("close the browser");
}
