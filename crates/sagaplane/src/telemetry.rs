//! Logs (JSON or pretty, to stderr) and the Prometheus recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the log subscriber. `RUST_LOG` refines the default `info` level.
pub fn init_logs(format: LogFormat) {
    init_logs_at(format, "info,sqlx=warn,tower_http=warn");
}

/// Logs to stderr at `default` unless `RUST_LOG` says otherwise (benchmarks keep to warnings,
/// so their report stays readable and anything that went wrong still shows).
pub fn init_logs_at(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Installs the global metrics recorder and keeps its histograms fresh.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .set_buckets_for_metric(
            Matcher::Full(saga_runtime::metrics_names::SAGA_COMMIT_BATCH_SIZE.into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )?
        .install_recorder()?;
    saga_runtime::metrics_names::describe();
    saga_runtime::metrics_names::register_engine();
    server::observe::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Keeps the store-wide gauges (queue depth, oldest due age, connection pool) current until
/// `stop` turns true.
pub fn spawn_store_gauges(
    store: std::sync::Arc<dyn saga_store::Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now_ms = chrono::Utc::now().timestamp_millis();
            match store.saga_due_summary(now_ms).await {
                Ok(due) => saga_runtime::metrics_names::store_gauges(
                    due,
                    store.pool_status(),
                    &store.connection_status(),
                    now_ms,
                ),
                Err(e) => tracing::debug!(error = %e, "reading the queue depth failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(saga_runtime::metrics_names::STORE_GAUGES_REFRESH) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    })
}

/// Exports traces over OTLP/gRPC to `endpoint` (`SAGAPLANE_OTLP_ENDPOINT`, e.g.
/// `http://127.0.0.1:4317`), batched; saga root spans take the ids of `SagaIdGenerator`.
pub fn init_traces(endpoint: &str) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("SAGAPLANE_OTLP_ENDPOINT: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("sagaplane").build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(saga_runtime::trace::SagaIdGenerator::default())
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!(endpoint, "exporting traces over OTLP/gRPC");
    Ok(provider)
}

/// Flushes the spans not yet exported and stops the exporter.
pub fn shutdown_traces(provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    if let Some(provider) = provider {
        if let Err(e) = tokio::task::block_in_place(|| provider.shutdown()) {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}
