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
