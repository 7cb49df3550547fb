//! `sagaplane top`: a live terminal view of one server — throughput by status, in flight, queue
//! depth and the oldest due saga's age, open breakers, the delivery backlog, and the unfinished
//! sagas that have gone longest without a transition, each with what holds it (its blockers).
//! Read from `/metrics` and the API; `--once` prints one frame and exits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{Client, Connection};

/// The stalled sagas shown.
pub const STALLED_SHOWN: u32 = 10;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Time between refreshes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one frame and exit (throughput needs two scrapes: it shows "—").
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    connection: Connection,
}

/// One scrape of `/metrics`: `name → [(labels, value)]`.
type Scrape = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// Parses Prometheus text exposition lines (`name{k="v",…} value`); comments skipped.
fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        scrape.entry(name.to_string()).or_default().push((labels, value));
    }
    scrape
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end.min(after.len())..];
    }
    labels
}

fn sum(scrape: &Scrape, name: &str, filter: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    scrape.get(name).map_or(0.0, |series| series.iter().filter(|(l, _)| filter(l)).map(|(_, v)| v).sum())
}

fn label_values_where_one(scrape: &Scrape, name: &str, label: &str) -> Vec<String> {
    scrape
        .get(name)
        .map(|series| series.iter().filter(|(_, v)| *v >= 1.0).filter_map(|(l, _)| l.get(label).cloned()).collect())
        .unwrap_or_default()
}

fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// One frame of the view.
fn frame(scrape: &Scrape, previous: Option<(&Scrape, Duration)>, stalled: &[(Value, Value)], base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "sagaplane top — {base}   {}", chrono::Utc::now().format("%H:%M:%S UTC"));
    let finished =
        |s: &Scrape, status: &str| sum(s, "saga_total", |l| l.get("status").map(String::as_str) == Some(status));
    let mut rates = Vec::new();
    for status in ["COMPLETED", "COMPENSATED", "FAILED"] {
        let rate = previous.map(|(before, elapsed)| {
            (finished(scrape, status) - finished(before, status)).max(0.0) / elapsed.as_secs_f64().max(0.001)
        });
        rates.push(format!(
            "{} {}",
            status.to_lowercase(),
            rate.map_or_else(|| "—".to_string(), |r| format!("{r:.1}/s"))
        ));
    }
    let _ = writeln!(out, "throughput   {}", rates.join("   "));
    let _ = writeln!(
        out,
        "in flight    {:.0} (this instance)   queue depth {:.0}   oldest due {}",
        sum(scrape, "saga_in_flight", |_| true),
        sum(scrape, "saga_queue_depth", |_| true),
        age(sum(scrape, "saga_oldest_due_age_seconds", |_| true)),
    );
    let pending = sum(scrape, "saga_delivery_pending", |_| true);
    let oldest_pending = scrape
        .get("saga_delivery_oldest_pending_age_seconds")
        .map(|series| series.iter().map(|(_, v)| *v).fold(0.0, f64::max))
        .unwrap_or(0.0);
    let _ = writeln!(out, "deliveries   {pending:.0} pending, the oldest {}", age(oldest_pending));
    let mut breakers = label_values_where_one(scrape, "saga_circuit_open", "endpoint");
    breakers.extend(
        label_values_where_one(scrape, "saga_delivery_breaker_open", "subscription")
            .into_iter()
            .map(|s| format!("subscription {s}")),
    );
    let _ = writeln!(
        out,
        "breakers     {}",
        if breakers.is_empty() { "none open".to_string() } else { format!("OPEN: {}", breakers.join(", ")) }
    );
    let _ = writeln!(out, "\nlongest without progress (unfinished sagas, oldest transition first):");
    if stalled.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let now = chrono::Utc::now();
    for (saga, blockers) in stalled {
        let since = saga["updated_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| age((now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0))
            .unwrap_or_else(|| "?".into());
        let held = blockers["blockers"][0]["kind"].as_str().unwrap_or("?");
        let detail = blockers["blockers"][0]["detail"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "  {}  {:<20} {:<12} {:>7}  {:<11} {}",
            saga["id"].as_str().unwrap_or("?"),
            saga["definition"].as_str().unwrap_or("?"),
            saga["status"].as_str().unwrap_or("?"),
            since,
            held,
            detail
        );
    }
    out
}

async fn scrape(client: &Client) -> anyhow::Result<Scrape> {
    let response = client.request(reqwest::Method::GET, "/metrics").send().await?;
    if !response.status().is_success() {
        anyhow::bail!("GET /metrics answered {}", response.status());
    }
    Ok(parse_metrics(&response.text().await?))
}

async fn stalled(client: &Client) -> anyhow::Result<Vec<(Value, Value)>> {
    let path = format!("/v1/sagas?order=stalled&limit={STALLED_SHOWN}");
    let (_, page) = client.send(client.request(reqwest::Method::GET, &path)).await?;
    let mut out = Vec::new();
    for saga in page["items"].as_array().cloned().unwrap_or_default() {
        let id = saga["id"].as_str().unwrap_or_default().to_string();
        let blockers = client
            .send(client.request(reqwest::Method::GET, &format!("/v1/sagas/{id}/blockers")))
            .await
            .map(|(_, b)| b)
            .unwrap_or(Value::Null);
        out.push((saga, blockers));
    }
    Ok(out)
}

pub async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.connection);
    let base = args.connection.url.clone();
    let mut previous: Option<(Scrape, Instant)> = None;
    loop {
        let now = Instant::now();
        let current = scrape(&client).await?;
        let stalled = stalled(&client).await?;
        let before = previous.as_ref().map(|(s, at)| (s, now.saturating_duration_since(*at)));
        let text = frame(&current, before, &stalled, &base);
        if args.once {
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        // Clear the screen and draw from the top.
        print!("\x1b[2J\x1b[H{text}");
        previous = Some((current, now));
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_read_with_its_labels() {
        let scrape = parse_metrics(
            "# HELP saga_total x\nsaga_total{definition=\"a\",status=\"COMPLETED\"} 3\n\
             saga_total{definition=\"b\",status=\"COMPLETED\"} 4\nsaga_queue_depth 7\n\
             saga_circuit_open{endpoint=\"http://x:1/a,b\"} 1\nsaga_circuit_open{endpoint=\"http://y:2\"} 0\n",
        );
        assert_eq!(sum(&scrape, "saga_total", |l| l.get("status").map(String::as_str) == Some("COMPLETED")), 7.0);
        assert_eq!(sum(&scrape, "saga_queue_depth", |_| true), 7.0);
        assert_eq!(label_values_where_one(&scrape, "saga_circuit_open", "endpoint"), vec!["http://x:1/a,b"]);
        assert_eq!(age(75.0), "75s");
        assert_eq!(age(3_700.0), "61m40s");
        assert_eq!(age(90_000.0), "25h00m");
    }
}
