//! The `grpc` executor: calls `Participant.Execute` / `Participant.Compensate`
//! (`proto/participant.proto`) with one HTTP/2 channel per endpoint (connection reuse), a
//! per-attempt deadline, trace context in metadata, and the status table in the proto's comments.
//! With an address policy that refuses anything (`SAGAPLANE_HTTP_DENY`) channels connect through
//! [`checking_connector`], and an attempt whose endpoint resolves only into refused networks
//! fails definitely, nothing sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use saga_core::{FailureKind, Outcome, Phase};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::http::traceparent;
use super::AttemptContext;
use egress::{denied_in, AddressPolicy};
use participant_proto::v1::participant_client::ParticipantClient;
use participant_proto::v1::StepRequest;

/// The most channels kept; past it the cache starts again (endpoints are few in practice).
const CHANNELS_MAX: usize = 1_024;

/// Calls gRPC participants.
#[derive(Clone, Default)]
pub struct GrpcExecutor {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    policy: AddressPolicy,
}

impl GrpcExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Channels that connect only where `policy` allows.
    pub fn with_policy(policy: AddressPolicy) -> Self {
        GrpcExecutor { channels: Arc::default(), policy }
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().map_err(|_| "grpc channel cache poisoned".to_string())?;
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let settings = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| format!("invalid grpc endpoint {endpoint:?}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let channel = if self.policy.is_open() {
            settings.connect_lazy()
        } else {
            settings.connect_with_connector_lazy(checking_connector(self.policy.clone()))
        };
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    /// One attempt against `endpoint`.
    pub async fn call(&self, endpoint: &str, service: &str, input: &Value, ctx: &AttemptContext) -> Outcome {
        if let Some(message) = self.denied(endpoint).await {
            return Outcome::Failed { kind: FailureKind::NonRetryable, message };
        }
        let channel = match self.channel(endpoint) {
            Ok(channel) => channel,
            Err(message) => return Outcome::Failed { kind: FailureKind::NonRetryable, message },
        };
        let mut client = ParticipantClient::new(channel);
        let message = StepRequest {
            saga_id: ctx.saga_id.to_string(),
            step: ctx.step.clone(),
            attempt: ctx.attempt,
            idempotency_key: ctx.idempotency_key(),
            service: service.to_string(),
            input_json: input.to_string(),
            tenant_id: ctx.tenant_id.clone().unwrap_or_default(),
        };
        let mut request = tonic::Request::new(message);
        request.set_timeout(Duration::from_millis(ctx.timeout_ms));
        let metadata = request.metadata_mut();
        for (key, value) in [
            ("traceparent", traceparent(ctx)),
            ("x-saga-id", ctx.saga_id.to_string()),
            ("x-saga-step", ctx.step.clone()),
            ("x-saga-attempt", ctx.attempt.to_string()),
            ("x-saga-fencing-token", ctx.fencing_token.to_string()),
        ] {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        }
        let reply = match ctx.phase {
            Phase::Action => client.execute(request).await,
            Phase::Compensation => client.compensate(request).await,
        };
        match reply {
            Ok(reply) => {
                let text = reply.into_inner().output_json;
                if text.trim().is_empty() {
                    return Outcome::Succeeded(Value::Null);
                }
                match serde_json::from_str(&text) {
                    Ok(output) => Outcome::Succeeded(output),
                    // The participant acted but its answer is unreadable: ambiguous.
                    Err(e) => Outcome::Failed {
                        kind: FailureKind::Retryable,
                        message: format!("participant output is not JSON: {e}"),
                    },
                }
            }
            // A status tonic made from a connection or stream that failed (it carries that error
            // as its source) is not the participant's answer: the call may have reached it or
            // not — ambiguous, like a 5xx. (Read as the participant's `Unknown`, a participant
            // killed mid-call was a definite failure and its effect went uncompensated — found
            // by the shop example's reconciliation.)
            Err(status) if std::error::Error::source(&status).is_some() => Outcome::Failed {
                kind: FailureKind::Retryable,
                message: format!("the call failed before an answer: {}", status.message()),
            },
            Err(status) => classify(status.code(), status.message(), ctx.phase),
        }
    }
}

impl GrpcExecutor {
    /// Why `endpoint` may not be called, when every address it resolves to is denied. (The
    /// connector checks again at connect time, so a name re-pointed later is refused there.)
    async fn denied(&self, endpoint: &str) -> Option<String> {
        if self.policy.is_open() {
            return None;
        }
        let uri: tonic::transport::Uri = endpoint.parse().ok()?;
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let error = self.policy.resolve(uri.host()?, port).await.err()?;
        denied_in(&error).map(ToString::to_string)
    }
}

/// Connects a channel to the first allowed address of its endpoint's host.
fn checking_connector(
    policy: AddressPolicy,
) -> impl tower::Service<
    tonic::transport::Uri,
    Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: tonic::transport::Uri| {
        let policy = policy.clone();
        async move {
            let host = uri.host().ok_or_else(|| std::io::Error::other("grpc endpoint has no host"))?;
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let mut last_error = std::io::Error::other("no address to connect to");
            for address in policy.resolve(host, port).await? {
                match tokio::net::TcpStream::connect(address).await {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(hyper_util::rt::TokioIo::new(stream));
                    }
                    Err(error) => last_error = error,
                }
            }
            Err(last_error)
        }
    })
}

/// The status table of `proto/participant.proto`.
pub fn classify(code: Code, message: &str, phase: Phase) -> Outcome {
    let text = if message.is_empty() {
        format!("participant answered {code:?}")
    } else {
        format!("participant answered {code:?}: {message}")
    };
    match (code, phase) {
        (Code::Ok, _) => Outcome::Succeeded(Value::Null),
        (Code::NotFound, Phase::Compensation) => Outcome::Succeeded(Value::Null),
        (Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted | Code::Internal, _) => {
            Outcome::Failed { kind: FailureKind::Retryable, message: text }
        }
        _ => Outcome::Failed { kind: FailureKind::NonRetryable, message: text },
    }
}

#[cfg(test)]
mod tests;
