//! A high-availability PostgreSQL pair a test builds for itself from Debian's packages: one etcd,
//! two PostgreSQL 15 members managed by Patroni with synchronous replication
//! (`synchronous_mode`, so an acknowledged commit is on both), and HAProxy in front sending
//! connections to whichever member Patroni's REST API calls the primary (`GET /primary` answers
//! 200 only there). Every process runs as `postgres` from one temporary directory and is stopped
//! when the pair is dropped.
//!
//! Patroni is set to fail over rather than restart a crashed primary in place
//! (`primary_start_timeout: 0`), with a short leader TTL, so a test sees a real failover in
//! seconds.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::clusters::{as_postgres, as_root, free_ports, wait_for_port};

/// One Patroni member: its name, PostgreSQL port and REST API port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
}

/// The pair, etcd and HAProxy; `port` is HAProxy's (where clients connect).
pub struct HaPair {
    pub port: u16,
    pub members: Vec<Member>,
    dir: PathBuf,
    children: Vec<Child>,
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs `program args` as root without failing when it fails (`pkill` matching nothing).
fn as_root_quietly(program: &str, args: &[&str]) {
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false);
    let mut command = if is_root { Command::new(program) } else { Command::new("sudo") };
    if !is_root {
        command.args(["-n", program]);
    }
    let _ = command.args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A blocking HTTP/1.0 request to `127.0.0.1:port`: `(status, body)`, or `None` when nothing
/// answers within two seconds.
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

impl HaPair {
    /// Builds and starts the pair under `scope` (the Patroni cluster name); returns once one
    /// member leads, the other is its synchronous standby, and HAProxy reaches the leader.
    pub fn start(scope: &str) -> HaPair {
        let dir =
            std::env::temp_dir().join(format!("sagaplane-ha-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        std::fs::create_dir_all(&dir).expect("ha dir");
        let [port, etcd_port, etcd_peer_port, pg1, api1, pg2, api2] = free_ports::<7>();
        let members: Vec<Member> = [("pg1", pg1, api1), ("pg2", pg2, api2)]
            .into_iter()
            .map(|(name, pg_port, api_port)| Member { name: name.to_string(), pg_port, api_port })
            .collect();
        let mut haproxy = format!(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30m\n  \
             timeout server 30m\n  timeout check 2s\nlisten primary\n  bind 127.0.0.1:{port}\n  \
             option httpchk GET /primary\n  http-check expect status 200\n  \
             default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
        );
        for member in &members {
            haproxy.push_str(&format!(
                "  server {} 127.0.0.1:{} maxconn 500 check port {}\n",
                member.name, member.pg_port, member.api_port
            ));
        }
        std::fs::write(dir.join("haproxy.cfg"), haproxy).expect("haproxy.cfg");
        for member in &members {
            std::fs::write(dir.join(format!("{}.yml", member.name)), patroni_config(scope, member, etcd_port, &dir))
                .expect("patroni config");
        }
        for name in ["etcd", "haproxy", "pg1", "pg2"] {
            std::fs::write(dir.join(format!("{name}.log")), "").expect("log file");
        }
        as_root("chown", &["-R", "postgres:postgres", path_str(&dir)]);
        as_root("chmod", &["0700", path_str(&dir)]);

        let mut pair = HaPair { port, members, dir, children: Vec::new() };
        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_data = pair.dir.join("etcd");
        let initial_cluster = format!("{scope}={etcd_peer}");
        pair.spawn(
            "etcd",
            "/usr/bin/etcd",
            &[
                "--name",
                scope,
                "--data-dir",
                path_str(&etcd_data),
                "--listen-client-urls",
                &etcd_client,
                "--advertise-client-urls",
                &etcd_client,
                "--listen-peer-urls",
                &etcd_peer,
                "--initial-advertise-peer-urls",
                &etcd_peer,
                "--initial-cluster",
                &initial_cluster,
            ],
        );
        wait_for_port(etcd_port, Duration::from_secs(30));
        let haproxy_cfg = pair.dir.join("haproxy.cfg");
        pair.spawn("haproxy", "/usr/sbin/haproxy", &["-f", path_str(&haproxy_cfg), "-db"]);
        // The first member bootstraps (initdb) and leads; the second then clones it.
        for (index, member) in pair.members.clone().iter().enumerate() {
            let config = pair.dir.join(format!("{}.yml", member.name));
            pair.spawn(&member.name, "/usr/bin/patroni", &[path_str(&config)]);
            if index == 0 {
                pair.wait_until("the first member leads", Duration::from_secs(90), |pair| {
                    pair.leader().is_some_and(|leader| leader == *member)
                });
            }
        }
        pair.wait_healthy(Duration::from_secs(120));
        pair
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str]) {
        let log =
            std::fs::OpenOptions::new().append(true).open(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = as_postgres(program, args)
            .current_dir(&self.dir)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        self.children.push(child);
    }

    fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut(&HaPair) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < timeout, "{what}: not after {timeout:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until one member leads, the other streams as its synchronous standby, and
    /// HAProxy's port reaches the leader.
    pub fn wait_healthy(&self, timeout: Duration) {
        self.wait_until("a leader with a synchronous standby", timeout, |pair| {
            let Some(cluster) = pair.cluster() else { return false };
            let members = cluster["members"].as_array().cloned().unwrap_or_default();
            let running = |role: &str| members.iter().any(|m| m["role"] == role && m["state"] == "running");
            running("leader") && running("sync_standby")
        });
        wait_for_port(self.port, timeout);
        self.wait_until("HAProxy reaches the leader", timeout, |pair| pair.try_psql("SELECT 1").is_some());
    }

    /// Patroni's view of the cluster (`GET /cluster`), from the first member that answers.
    pub fn cluster(&self) -> Option<Value> {
        self.members.iter().find_map(|member| {
            let (status, body) = http(member.api_port, "GET", "/cluster", None)?;
            (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
        })
    }

    /// The member that leads and runs, as Patroni says.
    pub fn leader(&self) -> Option<Member> {
        let cluster = self.cluster()?;
        let members = cluster["members"].as_array()?;
        let leader =
            members.iter().find(|m| m["role"] == "leader" && m["state"] == "running")?["name"].as_str()?.to_string();
        self.members.iter().find(|m| m.name == leader).cloned()
    }

    /// SIGKILLs `member`'s postmaster (its backends end when they notice; Patroni sees its
    /// PostgreSQL gone).
    pub fn kill_postmaster(&self, member: &Member) {
        let pid_file = self.dir.join(&member.name).join("postmaster.pid");
        let output = as_postgres("head", &["-n", "1", path_str(&pid_file)]).output().expect("read postmaster.pid");
        let pid = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(!pid.is_empty(), "no postmaster.pid for {}", member.name);
        let status = as_postgres("kill", &["-KILL", &pid]).status().expect("kill");
        assert!(status.success(), "kill -KILL {pid}");
    }

    /// A planned switchover from `leader` to `candidate` through Patroni's REST API.
    pub fn switchover(&self, leader: &Member, candidate: &Member) -> (u16, String) {
        let body = format!(r#"{{"leader": "{}", "candidate": "{}"}}"#, leader.name, candidate.name);
        http(leader.api_port, "POST", "/switchover", Some(&body)).unwrap_or((0, "no answer".into()))
    }

    /// Runs SQL as `postgres` through HAProxy (on the leader); panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_at(self.port, "postgres", sql).unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    fn try_psql(&self, sql: &str) -> Option<String> {
        self.psql_at(self.port, "postgres", sql).ok()
    }

    /// Runs SQL as `postgres` on `port` (HAProxy's or a member's own) in `database`.
    pub fn psql_at(&self, port: u16, database: &str, sql: &str) -> Result<String, String> {
        let port = port.to_string();
        let output = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", database])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The last lines of every process's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["etcd", "haproxy", "pg1", "pg2"] {
            let path = self.dir.join(format!("{name}.log"));
            let output = as_postgres("tail", &["-n", "15", path_str(&path)]).output();
            let tail = output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            text.push_str(&format!("--- {name}.log\n{tail}"));
        }
        text
    }
}

impl Drop for HaPair {
    fn drop(&mut self) {
        // Patroni stops its PostgreSQL on SIGTERM; whatever is left after a while is killed.
        let dir = path_str(&self.dir).to_string();
        as_root_quietly("pkill", &["-TERM", "-f", &format!("patroni {dir}")]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            let running = Command::new("pgrep").args(["-f", &format!("patroni {dir}")]).output();
            if running.map(|o| o.stdout.is_empty()).unwrap_or(true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        as_root_quietly("pkill", &["-KILL", "-f", &dir]);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        as_root_quietly("rm", &["-rf", &dir]);
    }
}

/// One member's Patroni configuration: etcd v3, synchronous mode, fail over on a crash, trust
/// on loopback (the test's own cluster; Sagaplane's URL still carries a password).
fn patroni_config(scope: &str, member: &Member, etcd_port: u16, dir: &Path) -> String {
    let data_dir = dir.join(&member.name);
    let pgpass = dir.join(format!("{}.pgpass", member.name));
    format!(
        "scope: {scope}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    primary_start_timeout: 0
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 200
        wal_log_hints: 'on'
        wal_keep_size: 128MB
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {pgpass}
  authentication:
    replication:
      username: replicator
      password: replicator
    superuser:
      username: postgres
      password: postgres
    rewind:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: {socket}
",
        name = member.name,
        api = member.api_port,
        pg = member.pg_port,
        data = path_str(&data_dir),
        pgpass = path_str(&pgpass),
        socket = path_str(dir),
    )
}
