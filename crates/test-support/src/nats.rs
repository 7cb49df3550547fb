//! A real NATS JetStream server for tests, and a stream per test on it.
//!
//! `scripts/test` starts one `nats-server -js` on loopback and exports its URL as
//! `SAGAPLANE_TEST_NATS_URL`; without it (a developer's `cargo nextest run`), the first test to
//! ask starts its own `nats-server` child with a temporary store, if one is on the PATH.
//! [`CuttingProxy`] stands between Sagaplane and the server to lose a publish's ack once.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The NATS server tests publish to.
pub async fn nats_url() -> String {
    if let Ok(url) = std::env::var("SAGAPLANE_TEST_NATS_URL") {
        return url;
    }
    static SPAWNED: OnceLock<String> = OnceLock::new();
    if let Some(url) = SPAWNED.get() {
        return url.clone();
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("port").port()
    };
    let store = std::env::temp_dir().join(format!("sagaplane-nats-{}", uuid::Uuid::new_v4()));
    let child = std::process::Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is not installed: run scripts/test, or apt-get install nats-server");
    // It lives as long as the test process (one per test binary run under nextest).
    std::mem::forget(child);
    let url = format!("nats://127.0.0.1:{port}");
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    SPAWNED.get_or_init(|| url).clone()
}

/// A JetStream stream of this test's own, on one subject.
pub struct TestStream {
    pub url: String,
    pub subject: String,
    pub stream: jetstream::stream::Stream,
}

impl TestStream {
    /// Creates a stream named after a fresh id, listening on `<id>.events`.
    pub async fn create() -> TestStream {
        let url = nats_url().await;
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        let subject = format!("{name}.events");
        let client = async_nats::connect(&url).await.expect("connect to nats-server");
        let context = jetstream::new(client);
        let stream = context
            .create_stream(jetstream::stream::Config {
                name,
                subjects: vec![subject.clone()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .expect("create a JetStream stream");
        TestStream { url, subject, stream }
    }

    /// Every message the stream holds, oldest first.
    pub async fn messages(&mut self) -> Vec<jetstream::message::StreamMessage> {
        let info = self.stream.info().await.expect("stream info");
        let (first, last, count) = (info.state.first_sequence, info.state.last_sequence, info.state.messages);
        let mut messages = Vec::new();
        if count == 0 {
            return messages;
        }
        for sequence in first..=last {
            if let Ok(message) = self.stream.get_raw_message(sequence).await {
                messages.push(message);
            }
        }
        messages
    }
}

/// A TCP proxy to a NATS server that, once armed, passes the next publish (`HPUB`) on to the
/// server and then cuts the connection before the server's answer gets back: the message is
/// stored, its ack is lost, and the publisher sees a failed attempt.
pub struct CuttingProxy {
    pub url: String,
    armed: Arc<AtomicBool>,
}

impl CuttingProxy {
    pub async fn start(upstream_url: &str) -> CuttingProxy {
        let upstream = upstream_url.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let url = format!("nats://{}", listener.local_addr().expect("proxy address"));
        let armed = Arc::new(AtomicBool::new(false));
        let armed_for_loop = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                tokio::spawn(pipe(client, server, armed_for_loop.clone()));
            }
        });
        CuttingProxy { url, armed }
    }

    /// The next publish through the proxy loses its ack.
    pub fn cut_next_publish(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

async fn pipe(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let holding = Arc::new(AtomicBool::new(false));
    let holding_answers = holding.clone();
    let answers = tokio::spawn(async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if holding_answers.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let publishes = buffer[..n].windows(5).any(|w| w == b"HPUB ");
        let cut = publishes && armed.swap(false, Ordering::SeqCst);
        if cut {
            // Nothing the server says from here on reaches the client.
            holding.store(true, Ordering::SeqCst);
        }
        if server_write.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        if cut {
            tokio::time::sleep(Duration::from_millis(300)).await;
            break;
        }
    }
    answers.abort();
}
