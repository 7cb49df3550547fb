//! A scriptable gRPC participant: a real tonic server on loopback implementing
//! `proto/participant.proto`, answering each method with a scripted sequence (the last repeats)
//! and recording every request with its metadata.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use participant_proto::v1::participant_server::{Participant, ParticipantServer};
use participant_proto::v1::{StepReply, StepRequest};
use serde_json::Value;
use tonic::{Code, Request, Response, Status};

/// One call the participant saw.
#[derive(Clone, Debug)]
pub struct GrpcSeen {
    pub method: &'static str,
    /// The client's address: the same one on two calls means a reused connection.
    pub peer: Option<std::net::SocketAddr>,
    pub request: StepRequest,
    pub metadata: HashMap<String, String>,
}

/// A scripted answer: an output, or a status code.
pub type Answer = Result<Value, Code>;

#[derive(Default)]
struct Inner {
    scripts: HashMap<&'static str, Vec<Answer>>,
    seen: Vec<GrpcSeen>,
}

/// The participant server.
#[derive(Clone)]
pub struct GrpcParticipant {
    pub endpoint: String,
    inner: Arc<Mutex<Inner>>,
}

struct Service {
    inner: Arc<Mutex<Inner>>,
}

impl Service {
    fn answer(&self, method: &'static str, request: Request<StepRequest>) -> Result<Response<StepReply>, Status> {
        let metadata = request
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(key, value) => {
                    Some((key.as_str().to_string(), value.to_str().unwrap_or("").to_string()))
                }
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let peer = request.remote_addr();
        let Ok(mut inner) = self.inner.lock() else {
            return Err(Status::internal("poisoned"));
        };
        inner.seen.push(GrpcSeen { method, peer, request: request.into_inner(), metadata });
        let answer = match inner.scripts.get_mut(method) {
            Some(script) if script.len() > 1 => script.remove(0),
            Some(script) if script.len() == 1 => script[0].clone(),
            _ => Ok(serde_json::json!({"method": method})),
        };
        match answer {
            Ok(output) => Ok(Response::new(StepReply { output_json: output.to_string() })),
            Err(code) => Err(Status::new(code, format!("scripted {code:?}"))),
        }
    }
}

#[tonic::async_trait]
impl Participant for Service {
    async fn execute(&self, request: Request<StepRequest>) -> Result<Response<StepReply>, Status> {
        self.answer("execute", request)
    }

    async fn compensate(&self, request: Request<StepRequest>) -> Result<Response<StepReply>, Status> {
        self.answer("compensate", request)
    }
}

impl GrpcParticipant {
    pub async fn start() -> GrpcParticipant {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind grpc participant");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let service = ParticipantServer::new(Service { inner: inner.clone() });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        GrpcParticipant { endpoint, inner }
    }

    /// Answers `method` (`execute` or `compensate`) with these in turn; the last repeats.
    pub fn script(&self, method: &'static str, answers: Vec<Answer>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.scripts.insert(method, answers);
        }
    }

    /// Every call to `method`, in arrival order.
    pub fn calls(&self, method: &str) -> Vec<GrpcSeen> {
        self.inner.lock().map(|i| i.seen.iter().filter(|s| s.method == method).cloned().collect()).unwrap_or_default()
    }
}
