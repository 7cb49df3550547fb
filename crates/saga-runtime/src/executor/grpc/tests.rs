use tonic::Code;

use super::*;

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded(_) => "ok",
        Outcome::Failed { kind: FailureKind::Retryable, .. } => "retry",
        Outcome::Failed { .. } => "definite",
    }
}

#[test]
fn status_table() {
    let cases = [
        (Code::Unavailable, Phase::Action, "retry"),
        (Code::DeadlineExceeded, Phase::Action, "retry"),
        (Code::ResourceExhausted, Phase::Compensation, "retry"),
        (Code::Aborted, Phase::Action, "retry"),
        (Code::Internal, Phase::Action, "retry"),
        (Code::NotFound, Phase::Action, "definite"),
        (Code::NotFound, Phase::Compensation, "ok"),
        (Code::InvalidArgument, Phase::Action, "definite"),
        (Code::FailedPrecondition, Phase::Compensation, "definite"),
        (Code::PermissionDenied, Phase::Action, "definite"),
        (Code::Unknown, Phase::Action, "definite"),
    ];
    for (code, phase, expected) in cases {
        assert_eq!(kind(&classify(code, "", phase)), expected, "{code:?} {phase:?}");
    }
}

/// A participant that takes the call and dies before answering (the connection closes
/// mid-call): the call may have reached it, so the attempt is ambiguous, never definite.
#[tokio::test]
async fn a_connection_lost_mid_call_is_ambiguous() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        // Read the HTTP/2 preface and the request, then drop the connection without answering.
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), socket.read(&mut buffer)).await;
    });
    let ctx = AttemptContext {
        saga_id: uuid::Uuid::nil(),
        tenant_id: None,
        step: "charge".into(),
        phase: Phase::Action,
        attempt: 1,
        timeout_ms: 5_000,
        callback_url: None,
        traceparent: None,
        fencing_token: 1,
    };
    let outcome = GrpcExecutor::new().call(&endpoint, "payments", &serde_json::json!({}), &ctx).await;
    assert_eq!(kind(&outcome), "retry", "{outcome:?}");
    server.abort();
}
