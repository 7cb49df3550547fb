//! Client subcommands over the HTTP API: `definitions …` and `sagas …`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// API base URL.
    #[arg(long, env = "SAGAPLANE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Bearer token.
    #[arg(long, env = "SAGAPLANE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DefinitionsCommand {
    /// Create or update a definition from a JSON or YAML file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Name (default: the document's `name`, else the file stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// Check a new version against the sagas of the versions before, without applying it: which
    /// running sagas could move to it (`sagas upgrade` moves them) and why not.
    Check {
        file: PathBuf,
        /// Name (default: the document's `name`, else the file stem).
        #[arg(long)]
        name: Option<String>,
    },
    /// List definitions.
    List,
    /// Show the latest version of a definition.
    Show { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SagasCommand {
    /// Start a saga.
    Start {
        definition: String,
        /// Input as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        version: Option<i32>,
        #[arg(long)]
        tenant_id: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the saga is terminal and show it.
        #[arg(long)]
        wait: bool,
    },
    /// List sagas, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        definition: Option<String>,
        #[arg(long)]
        tenant_id: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a saga (with --events, its history).
    Show {
        id: String,
        #[arg(long)]
        events: bool,
    },
    /// Why a saga is not moving: everything that holds it now.
    Why {
        id: String,
        /// Print the JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Follow a saga's progress until it is terminal.
    Watch { id: String },
    /// Resume a FAILED saga; or, with a filter instead of an id, every FAILED saga it matches
    /// (one bulk job, followed until it ends; --dry-run only counts them).
    Retry {
        #[arg(required_unless_present_any = BulkFilter::FLAGS)]
        id: Option<String>,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Cancel a saga: it stops going forward and compensates what may have happened. With a
    /// filter instead of an id, every unfinished saga it matches (one bulk job).
    Cancel {
        #[arg(required_unless_present_any = BulkFilter::FLAGS)]
        id: Option<String>,
        /// Wait until the saga is terminal and show it.
        #[arg(long, conflicts_with_all = BulkFilter::FLAGS)]
        wait: bool,
        #[command(flatten)]
        filter: BulkFilter,
    },
    /// Move the running sagas of one version of a definition (--definition, --version) to another
    /// (--to, default the latest): those that have run only what starts the new version the same
    /// way (`definitions check` tells which); one bulk job, followed until it ends.
    Upgrade {
        /// The definition whose sagas move.
        #[arg(long)]
        definition: String,
        /// The version they are on.
        #[arg(long)]
        version: i32,
        /// The version to move to (default: the latest).
        #[arg(long)]
        to: Option<i32>,
        /// Only count the running sagas of that version.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write the sagas created in a time range, each with its history, one JSON line each — the
    /// format `SAGAPLANE_ARCHIVE_DIR` archives in.
    Export {
        /// Sagas created at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Sagas created before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// The file to write (default: standard output).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Deliver a signal (buffered until the saga reaches the step waiting for it).
    Signal {
        id: String,
        name: String,
        /// Payload as JSON: the waiting step's output.
        #[arg(long, default_value = "null")]
        data: String,
    },
}

/// Which sagas a bulk `retry` or `cancel` acts on (`POST /v1/sagas/actions`).
#[derive(Args, Debug, Default)]
pub struct BulkFilter {
    /// Only sagas with this status.
    #[arg(long, conflicts_with = "id")]
    status: Option<String>,
    /// Only sagas of this definition.
    #[arg(long, conflicts_with = "id")]
    definition: Option<String>,
    /// Only sagas of this definition version.
    #[arg(long, conflicts_with = "id")]
    version: Option<u32>,
    /// Only this tenant's sagas.
    #[arg(long, conflicts_with = "id")]
    tenant_id: Option<String>,
    /// Created after this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    created_after: Option<String>,
    /// Created before this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    created_before: Option<String>,
    /// Last changed after this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    updated_after: Option<String>,
    /// Last changed before this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    updated_before: Option<String>,
    /// Only sagas whose error contains this text (ignoring case).
    #[arg(long, conflicts_with = "id")]
    error_contains: Option<String>,
    /// Count the sagas the action would apply to; change nothing.
    #[arg(long, conflicts_with = "id")]
    dry_run: bool,
}

impl BulkFilter {
    /// The flags that make a command bulk (any one of them stands in for an id).
    const FLAGS: [&'static str; 10] = [
        "status",
        "definition",
        "version",
        "tenant_id",
        "created_after",
        "created_before",
        "updated_after",
        "updated_before",
        "error_contains",
        "dry_run",
    ];

    fn body(&self, action: &str) -> Value {
        let filter = serde_json::json!({
            "status": self.status.as_ref().map(|s| s.to_ascii_uppercase()),
            "definition": self.definition, "version": self.version, "tenant_id": self.tenant_id,
            "created_after": self.created_after, "created_before": self.created_before,
            "updated_after": self.updated_after, "updated_before": self.updated_before,
            "error_contains": self.error_contains,
        });
        let filter: serde_json::Map<String, Value> = filter
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::json!({"action": action, "filter": filter, "dry_run": self.dry_run})
    }
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(connection: &Connection) -> Self {
        // Never follow a redirect: the request carries the token, and a CLI pointed at the
        // wrong address should say so, not quietly talk to another one.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client { http, base: connection.url.trim_end_matches('/').to_string(), token: connection.token.clone() }
    }

    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let response = request.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let to = response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("?");
            bail!(
                "{} answered {status}, a redirect to {to}; the CLI does not follow redirects: set SAGAPLANE_URL to \
                 the server's own address",
                response.url()
            );
        }
        let text = response.text().await.context("reading response")?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            bail!("{}", describe_problem(status, &body));
        }
        Ok((status, body))
    }
}

fn describe_problem(status: u16, body: &Value) -> String {
    let mut text = format!(
        "{status} {}: {}",
        body["title"].as_str().unwrap_or("error"),
        body["detail"].as_str().unwrap_or(&body.to_string())
    );
    if let Some(errors) = body["errors"].as_array() {
        for e in errors {
            text.push_str(&format!(
                "\n  {}: {}",
                e["path"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
    }
    if status == 401 {
        text.push_str("\n(hint: pass --token or set SAGAPLANE_TOKEN)");
    }
    text
}

pub(crate) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

pub async fn definitions(command: DefinitionsCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection);
    match command {
        DefinitionsCommand::Apply { file, name } => {
            let (name, bytes, content_type) = read_document(&file, name)?;
            let request = client
                .request(reqwest::Method::PUT, &format!("/v1/definitions/{name}"))
                .header("content-type", content_type)
                .body(bytes);
            let (status, body) = client.send(request).await?;
            let verb = if status == 201 { "created" } else { "unchanged" };
            println!("definition {name} v{} {verb}", body["version"]);
            for warning in body["warnings"].as_array().into_iter().flatten() {
                eprintln!(
                    "warning: {}: {}",
                    warning["path"].as_str().unwrap_or(""),
                    warning["message"].as_str().unwrap_or("")
                );
            }
        }
        DefinitionsCommand::Check { file, name } => {
            let (name, bytes, content_type) = read_document(&file, name)?;
            let request = client
                .request(reqwest::Method::POST, &format!("/v1/definitions/{name}/check"))
                .header("content-type", content_type)
                .body(bytes);
            let (_, body) = client.send(request).await?;
            for saga in body["sagas"].as_array().into_iter().flatten() {
                let reasons: Vec<&str> =
                    saga["reasons"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let verdict = match (saga["finished"].as_bool(), reasons.is_empty()) {
                    (Some(true), true) => "finished; would have moved".to_string(),
                    (Some(true), false) => format!("finished; would not have moved: {}", reasons.join("; ")),
                    (_, true) => "can move".to_string(),
                    (_, false) => format!("cannot move: {}", reasons.join("; ")),
                };
                println!(
                    "{} v{:<3} {:<13} {verdict}",
                    saga["id"].as_str().unwrap_or(""),
                    saga["version"].as_i64().unwrap_or(0),
                    saga["status"].as_str().unwrap_or("")
                );
            }
            println!(
                "{} running saga(s) of {name} can move to this version, {} cannot{}",
                body["movable"],
                body["refused"],
                if body["movable"].as_u64().unwrap_or(0) > 0 {
                    "; apply it, then move them with `sagaplane sagas upgrade --definition NAME --version N`"
                } else {
                    ""
                }
            );
        }
        DefinitionsCommand::List => {
            let (_, body) = client.send(client.request(reqwest::Method::GET, "/v1/definitions")).await?;
            for item in body["items"].as_array().into_iter().flatten() {
                println!("{:<40} v{}", item["name"].as_str().unwrap_or(""), item["version"]);
            }
        }
        DefinitionsCommand::Show { name } => {
            let (_, body) =
                client.send(client.request(reqwest::Method::GET, &format!("/v1/definitions/{name}"))).await?;
            print_json(&body);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A definition file's name (`--name`, else its `name`, else the file's stem), bytes and
/// content type (YAML by its extension, else JSON).
fn read_document(file: &std::path::Path, name: Option<String>) -> anyhow::Result<(String, Vec<u8>, &'static str)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let is_yaml = matches!(file.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let format = if is_yaml { saga_core::DocumentFormat::Yaml } else { saga_core::DocumentFormat::Json };
    let document = saga_core::parse_document(&bytes, format).with_context(|| format!("parsing {}", file.display()))?;
    let name = name
        .or_else(|| document["name"].as_str().map(str::to_string))
        .or_else(|| file.file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .context("cannot tell the definition's name; pass --name")?;
    Ok((name, bytes, if is_yaml { "application/yaml" } else { "application/json" }))
}

fn progress_line(saga: &Value) -> String {
    let progress = &saga["progress"];
    format!(
        "{} {:<13} {}/{} steps{}",
        saga["id"].as_str().unwrap_or(""),
        saga["status"].as_str().unwrap_or(""),
        progress["completed_steps"],
        progress["total_steps"],
        progress["current_step"].as_str().map(|s| format!(", at {s}")).unwrap_or_default()
    )
}

fn is_terminal(saga: &Value) -> bool {
    matches!(saga["status"].as_str(), Some("COMPLETED" | "COMPENSATED" | "FAILED"))
}

/// Exit status for a terminal saga, said in words on standard error when it is not 0: 0 when
/// COMPLETED, 2 when it ended otherwise (COMPENSATED, FAILED); 1 is left for a command that
/// could not do what it was asked (docs/operations.md, "Exit codes").
fn terminal_code(saga: &Value) -> ExitCode {
    if saga["status"] == "COMPLETED" {
        return ExitCode::SUCCESS;
    }
    let error = &saga["error"];
    let cause = match (error["step"].as_str(), error["message"].as_str()) {
        (Some(step), Some(message)) => format!(": step {step}: {message}"),
        (None, Some(message)) => format!(": {message}"),
        _ => String::new(),
    };
    eprintln!(
        "exit 2: saga {} ended {}, not COMPLETED{cause}",
        saga["id"].as_str().unwrap_or("?"),
        saga["status"].as_str().unwrap_or("?")
    );
    ExitCode::from(2)
}

/// How often `watch` refreshes its progress bars.
const WATCH_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// Follows a saga until it is terminal: on a terminal, one live progress bar per step; otherwise
/// (logs, CI) one line per change.
async fn watch(client: &Client, id: &str) -> anyhow::Result<Value> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let mut last = String::new();
        loop {
            let (_, saga) =
                client.send(client.request(reqwest::Method::GET, &format!("/v1/sagas/{id}?wait=10s"))).await?;
            let line = progress_line(&saga);
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            if is_terminal(&saga) {
                return Ok(saga);
            }
        }
    }
    let bars = StepBars::new();
    loop {
        let (_, saga) = client.send(client.request(reqwest::Method::GET, &format!("/v1/sagas/{id}"))).await?;
        bars.show(&saga);
        if is_terminal(&saga) {
            bars.finish();
            return Ok(saga);
        }
        tokio::time::sleep(WATCH_REFRESH).await;
    }
}

/// A bar for the saga and one per step.
struct StepBars {
    multi: indicatif::MultiProgress,
    saga: indicatif::ProgressBar,
    steps: std::cell::RefCell<Vec<indicatif::ProgressBar>>,
}

impl StepBars {
    fn new() -> Self {
        let multi = indicatif::MultiProgress::new();
        let saga = multi.add(indicatif::ProgressBar::new(100));
        saga.set_style(bar_style("{prefix:>20} [{bar:30.cyan/blue}] {pos:>3}% {msg}"));
        StepBars { multi, saga, steps: std::cell::RefCell::new(Vec::new()) }
    }

    fn show(&self, saga: &Value) {
        let steps = saga["steps"].as_array().cloned().unwrap_or_default();
        let mut bars = self.steps.borrow_mut();
        while bars.len() < steps.len() {
            let bar = self.multi.add(indicatif::ProgressBar::new(1));
            bar.set_style(bar_style("{prefix:>20} [{bar:30.green/white}] {msg}"));
            bars.push(bar);
        }
        self.saga.set_prefix(saga["definition"].as_str().unwrap_or("saga").to_string());
        self.saga.set_position(saga["progress"]["percent"].as_u64().unwrap_or(0));
        self.saga.set_message(saga["status"].as_str().unwrap_or("").to_string());
        for (bar, step) in bars.iter().zip(&steps) {
            let status = step["status"].as_str().unwrap_or("");
            bar.set_prefix(step["name"].as_str().unwrap_or("").to_string());
            bar.set_position(u64::from(matches!(status, "SUCCEEDED" | "COMPENSATED" | "SKIPPED")));
            let mut message = status.to_string();
            if step["attempts"].as_u64().unwrap_or(0) > 1 {
                message.push_str(&format!(" (attempt {})", step["attempts"]));
            }
            if let Some(error) = step["error"].as_str() {
                message.push_str(&format!(": {error}"));
            }
            bar.set_message(message);
        }
    }

    fn finish(&self) {
        self.saga.finish();
        for bar in self.steps.borrow().iter() {
            bar.finish();
        }
    }
}

fn bar_style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ")
}

pub async fn sagas(command: SagasCommand, connection: Connection) -> anyhow::Result<ExitCode> {
    let client = Client::new(&connection);
    match command {
        SagasCommand::Start { definition, input, version, tenant_id, idempotency_key, wait } => {
            let input: Value = serde_json::from_str(&input).context("--input is not valid JSON")?;
            let body = serde_json::json!({"definition": definition, "input": input, "version": version, "tenant_id": tenant_id});
            let mut request = client.request(reqwest::Method::POST, "/v1/sagas").json(&body);
            if let Some(key) = idempotency_key {
                request = request.header("idempotency-key", key);
            }
            let (_, saga) = client.send(request).await?;
            if wait {
                let id = saga["id"].as_str().unwrap_or_default().to_string();
                let done = watch(&client, &id).await?;
                print_json(&done);
                return Ok(terminal_code(&done));
            }
            print_json(&saga);
        }
        SagasCommand::List { status, definition, tenant_id, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.map(|s| ("status", s.to_ascii_uppercase())));
            query.extend(definition.map(|d| ("definition", d)));
            query.extend(tenant_id.map(|t| ("tenant_id", t)));
            let (_, body) = client.send(client.request(reqwest::Method::GET, "/v1/sagas").query(&query)).await?;
            for saga in body["items"].as_array().into_iter().flatten() {
                println!("{}  {}", progress_line(saga), saga["definition"].as_str().unwrap_or(""));
            }
        }
        SagasCommand::Show { id, events } => {
            let path = if events { format!("/v1/sagas/{id}/events") } else { format!("/v1/sagas/{id}") };
            let (_, body) = client.send(client.request(reqwest::Method::GET, &path)).await?;
            print_json(&body);
        }
        SagasCommand::Why { id, json } => {
            let (_, body) =
                client.send(client.request(reqwest::Method::GET, &format!("/v1/sagas/{id}/blockers"))).await?;
            if json {
                print_json(&body);
            } else {
                print!("{}", why_lines(&body));
            }
        }
        SagasCommand::Watch { id } => {
            let done = watch(&client, &id).await?;
            print_json(&done);
            return Ok(terminal_code(&done));
        }
        SagasCommand::Retry { id: None, filter } => return bulk(&client, filter.body("retry")).await,
        SagasCommand::Cancel { id: None, filter, .. } => return bulk(&client, filter.body("cancel")).await,
        SagasCommand::Upgrade { definition, version, to, dry_run } => {
            let filter = serde_json::json!({"definition": definition, "version": version});
            let body = serde_json::json!({"action": "upgrade", "filter": filter, "version": to, "dry_run": dry_run});
            return bulk(&client, body).await;
        }
        SagasCommand::Retry { id: Some(id), .. } => {
            let (_, saga) =
                client.send(client.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/retry"))).await?;
            println!("{}", progress_line(&saga));
        }
        SagasCommand::Cancel { id: Some(id), wait, .. } => {
            let (_, saga) =
                client.send(client.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/cancel"))).await?;
            println!("cancel requested: {}", progress_line(&saga));
            if wait {
                let done = watch(&client, &id).await?;
                print_json(&done);
            }
        }
        SagasCommand::Export { since, until, output } => {
            let range = (time_flag("--since", since.as_deref())?, time_flag("--until", until.as_deref())?);
            let written = export(&client, range, output.as_deref()).await?;
            eprintln!("{written} sagas exported");
        }
        SagasCommand::Signal { id, name, data } => {
            let payload: Value = serde_json::from_str(&data).context("--data is not valid JSON")?;
            let request =
                client.request(reqwest::Method::POST, &format!("/v1/sagas/{id}/signals/{name}")).json(&payload);
            let (_, body) = client.send(request).await?;
            println!("signal {name} delivered to {id} (signal id {})", body["signal_id"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A bulk `retry` or `cancel`: the count with --dry-run; otherwise the job, followed with a
/// progress bar until it ends. Exit 0 when every saga was acted on, 1 otherwise.
async fn bulk(client: &Client, body: Value) -> anyhow::Result<ExitCode> {
    let action = body["action"].as_str().unwrap_or("?").to_string();
    let request = client.request(reqwest::Method::POST, "/v1/sagas/actions").json(&body);
    let (_, answer) = client.send(request).await?;
    let matched = answer["matched"].as_u64().unwrap_or(0);
    if body["dry_run"] == true {
        println!("{matched} sagas match; {action} would apply to each (dry run: nothing changed)");
        return Ok(ExitCode::SUCCESS);
    }
    let job_id = answer["job_id"].as_str().context("the server answered without a job id")?.to_string();
    println!("job {job_id}: {action} {matched} sagas");
    let bar = indicatif::ProgressBar::new(matched);
    bar.set_style(bar_style("{bar:40} {pos}/{len} {msg}"));
    let job = loop {
        let (_, job) = client.send(client.request(reqwest::Method::GET, &format!("/v1/jobs/{job_id}"))).await?;
        bar.set_position(job["done"].as_u64().unwrap_or(0) + job["failed"].as_u64().unwrap_or(0));
        bar.set_message(format!("{} failed", job["failed"].as_u64().unwrap_or(0)));
        if job["status"] != "running" {
            break job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    bar.finish_and_clear();
    let (status, done, failed) =
        (job["status"].as_str().unwrap_or("?"), job["done"].as_u64().unwrap_or(0), job["failed"].as_u64().unwrap_or(0));
    println!("job {job_id} {status}: {done} done, {failed} failed");
    for error in job["errors"].as_array().into_iter().flatten() {
        println!("  {}  {}", error["id"].as_str().unwrap_or("?"), error["error"].as_str().unwrap_or(""));
    }
    Ok(if status == "succeeded" { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// An RFC 3339 flag as epoch milliseconds.
fn time_flag(flag: &str, text: Option<&str>) -> anyhow::Result<Option<i64>> {
    text.map(|text| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.timestamp_millis())
            .with_context(|| format!("{flag} {text:?} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)"))
    })
    .transpose()
}

/// `sagas export`: every saga created in `[since, until)`, newest first, each with its whole
/// history, as one JSON line; how many.
async fn export(
    client: &Client,
    (since, until): (Option<i64>, Option<i64>),
    output: Option<&std::path::Path>,
) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let created = |saga: &Value| {
        saga["created_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    let mut written = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "500".to_string())];
        query.extend(cursor.clone().map(|c| ("cursor", c)));
        let (_, page) = client.send(client.request(reqwest::Method::GET, "/v1/sagas").query(&query)).await?;
        for saga in page["items"].as_array().into_iter().flatten() {
            let at = created(saga).unwrap_or(0);
            if since.is_some_and(|since| at < since) {
                out.flush()?;
                return Ok(written);
            }
            if until.is_some_and(|until| at >= until) {
                continue;
            }
            let mut line = saga.clone();
            line["history"] = Value::Array(history(client, saga["id"].as_str().unwrap_or_default()).await?);
            writeln!(out, "{line}")?;
            written += 1;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// A saga's whole history, every page.
async fn history(client: &Client, id: &str) -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", "500".to_string())];
        query.extend(cursor.clone().map(|c| ("cursor", c)));
        let path = format!("/v1/sagas/{id}/events");
        let (_, page) = client.send(client.request(reqwest::Method::GET, &path).query(&query)).await?;
        events.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(events),
        }
    }
}

/// `sagas why`: the status, then one line per blocker.
fn why_lines(body: &Value) -> String {
    let status = body["status"].as_str().unwrap_or("?");
    let mut out = format!("saga {} is {status}", body["saga_id"].as_str().unwrap_or("?"));
    let blockers = body["blockers"].as_array().cloned().unwrap_or_default();
    out.push_str(match (blockers.is_empty(), body["runnable"].as_bool()) {
        (true, _) => ": nothing holds it (it has ended)\n",
        (false, Some(true)) => ": runnable, only a free worker is missing\n",
        (false, _) => ", held by:\n",
    });
    for blocker in &blockers {
        let kind = blocker["kind"].as_str().unwrap_or("?");
        out.push_str(&format!("  {kind:<12} {}\n", blocker["detail"].as_str().unwrap_or("")));
    }
    out
}
