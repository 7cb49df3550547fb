//! `GET /debug/pprof/profile?seconds=N[&format=svg]` (admin): samples this process's CPU for N
//! seconds (at most 60) with the `pprof` crate and answers a profile in pprof's protobuf format
//! (gzip-free, readable by `go tool pprof` and `pprof`), or a flame graph SVG. One profile at a
//! time: a second request meanwhile → 409.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use prost::Message;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest profile one request may ask for.
pub const PROFILE_SECONDS_MAX: u64 = 60;
/// Samples per second.
pub const PROFILE_FREQUENCY_HZ: i32 = 99;

static PROFILING: AtomicBool = AtomicBool::new(false);

/// Clears [`PROFILING`] however the request ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::SeqCst);
    }
}

pub async fn profile(
    State(_state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    principal.require_admin()?;
    let (seconds, svg) = parse_query(&query)?;
    if PROFILING.swap(true, Ordering::SeqCst) {
        return Err(ApiError::Conflict("a profile is being taken; try again when it ends".into()));
    }
    let _running = Running;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| ApiError::Internal(format!("starting the profiler: {e}")))?;
    tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
    let report = guard.report().build().map_err(|e| ApiError::Internal(format!("building the profile: {e}")))?;
    drop(guard);
    if svg && report.data.is_empty() {
        // inferno draws nothing without samples: say so instead of answering an empty body.
        let body = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">\
             no CPU samples in {seconds} s: the process was idle</text></svg>"
        );
        return Ok(([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response());
    }
    if svg {
        let mut body = Vec::new();
        report.flamegraph(&mut body).map_err(|e| ApiError::Internal(format!("drawing the flame graph: {e}")))?;
        return Ok(([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response());
    }
    let body = encode(&report).encode_to_vec();
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

fn parse_query(query: &HashMap<String, String>) -> Result<(u64, bool), ApiError> {
    for key in query.keys() {
        if !["seconds", "format"].contains(&key.as_str()) {
            return Err(ApiError::field(&format!("/{key}"), "unknown parameter; expected seconds, format"));
        }
    }
    let seconds = match query.get("seconds") {
        None => 30,
        Some(text) => text.parse::<u64>().ok().filter(|s| (1..=PROFILE_SECONDS_MAX).contains(s)).ok_or_else(|| {
            ApiError::field("/seconds", format!("must be a whole number from 1 to {PROFILE_SECONDS_MAX}"))
        })?,
    };
    let svg = match query.get("format").map(String::as_str) {
        None | Some("pprof") => false,
        Some("svg") => true,
        Some(_) => return Err(ApiError::field("/format", "must be pprof (the default) or svg")),
    };
    Ok((seconds, svg))
}

/// pprof's `profile.proto`, the parts a CPU profile uses.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// Interns strings into a profile's string table (index 0 is "").
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn id(&mut self, text: &str) -> i64 {
        if self.table.is_empty() {
            self.table.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(id) = self.index.get(text) {
            return *id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), id);
        id
    }
}

/// The report as a pprof `Profile`: one location per symbol (inlined frames each their own),
/// leaf first; values are the sample count and its CPU time.
fn encode(report: &pprof::Report) -> proto::Profile {
    let mut strings = Strings::default();
    let period_ns = 1_000_000_000 / i64::from(report.timing.frequency.max(1));
    let sample_type = vec![
        proto::ValueType { r#type: strings.id("samples"), unit: strings.id("count") },
        proto::ValueType { r#type: strings.id("cpu"), unit: strings.id("nanoseconds") },
    ];
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list = Vec::new();
    let mut locations: HashMap<(u64, u32), u64> = HashMap::new();
    let mut location_list = Vec::new();
    let thread = strings.id("thread");
    let mut samples = Vec::new();
    for (frames, count) in &report.data {
        let mut location_id = Vec::new();
        for symbol in frames.frames.iter().flatten() {
            let (name, file) = (symbol.name(), symbol.filename().into_owned());
            let next_function = function_list.len() as u64 + 1;
            let function_id = *functions.entry((name.clone(), file.clone())).or_insert(next_function);
            if function_id == next_function {
                let name_id = strings.id(&name);
                function_list.push(proto::Function {
                    id: function_id,
                    name: name_id,
                    system_name: name_id,
                    filename: strings.id(&file),
                });
            }
            let next_location = location_list.len() as u64 + 1;
            let id = *locations.entry((function_id, symbol.lineno())).or_insert(next_location);
            if id == next_location {
                let line = proto::Line { function_id, line: i64::from(symbol.lineno()) };
                location_list.push(proto::Location { id, line: vec![line] });
            }
            location_id.push(id);
        }
        let count = *count as i64;
        let label = proto::Label { key: thread, str: strings.id(&frames.thread_name_or_id()) };
        samples.push(proto::Sample { location_id, value: vec![count, count * period_ns], label: vec![label] });
    }
    let start = report.timing.start_time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    proto::Profile {
        sample_type,
        sample: samples,
        location: location_list,
        function: function_list,
        time_nanos: i64::try_from(start.as_nanos()).unwrap_or(0),
        duration_nanos: i64::try_from(report.timing.duration.as_nanos()).unwrap_or(0),
        period_type: Some(proto::ValueType { r#type: strings.id("cpu"), unit: strings.id("nanoseconds") }),
        period: period_ns,
        string_table: strings.table,
    }
}
