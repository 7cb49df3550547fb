//! PostgreSQL clusters and PgBouncers a test makes for itself, from Debian's packages: a cluster
//! made with `pg_createcluster` on its own port (configured as the test asks: TLS, `hostssl`
//! lines only, trust), dropped with `pg_dropcluster` when the test ends; a PgBouncer with its
//! own configuration file in front of one. Both run as the `postgres` user (PostgreSQL and
//! PgBouncer refuse to run as root), through `runuser` when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VERSION: &str = "15";

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// Runs `program args` as root (directly, or with `sudo -n`); panics with its output on failure.
pub fn as_root(program: &str, args: &[&str]) -> String {
    let output = if is_root() {
        Command::new(program).args(args).output()
    } else {
        Command::new("sudo").arg("-n").arg(program).args(args).output()
    }
    .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A command that runs `program args` as the `postgres` user.
pub fn as_postgres(program: &str, args: &[&str]) -> Command {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "-u", "postgres", program]);
        c
    };
    command.args(args);
    command
}

/// Writes `text` to `path` as root, readable by `postgres`.
fn write_as_root(path: &Path, text: &str) {
    let staging = std::env::temp_dir().join(format!("sagaplane-conf-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&staging, text).expect("write staging file");
    as_root("install", &["-o", "postgres", "-g", "postgres", "-m", "0600", path_str(&staging), path_str(path)]);
    let _ = std::fs::remove_file(staging);
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < timeout, "nothing listens on port {port} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `N` free TCP ports on loopback, all different: each is held until all are picked (one at a
/// time, a released port can come back at once — HAProxy was once given etcd's).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port")).collect();
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr().expect("bound").port();
    }
    ports
}

/// A PostgreSQL 15 cluster of the test's own.
pub struct Cluster {
    pub name: String,
    pub port: u16,
    pub config_dir: PathBuf,
}

impl Cluster {
    /// Creates and starts cluster `name` on `port`: `settings` appended to `postgresql.conf`,
    /// `hba` as the whole of `pg_hba.conf` (a local-socket `trust` line for the `postgres` user
    /// is kept first, for [`Cluster::psql`]), `files` (name, contents) installed in its config
    /// directory. A cluster of that name left by an earlier run is dropped first.
    pub fn create(name: &str, port: u16, settings: &str, hba: &str, files: &[(&str, String)]) -> Cluster {
        drop_cluster(name);
        as_root(
            "pg_createcluster",
            &[VERSION, name, "-p", &port.to_string(), "--", "--auth-local=peer", "--auth-host=scram-sha-256"],
        );
        let config_dir = PathBuf::from(format!("/etc/postgresql/{VERSION}/{name}"));
        let conf_path = config_dir.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        conf.push_str("\n# set by the test\nlisten_addresses = '127.0.0.1'\nfsync = off\n");
        conf.push_str(settings);
        write_as_root(&conf_path, &conf);
        write_as_root(&config_dir.join("pg_hba.conf"), &format!("local all postgres peer\n{hba}\n"));
        for (file, contents) in files {
            write_as_root(&config_dir.join(file), contents);
        }
        as_root("pg_ctlcluster", &[VERSION, name, "start"]);
        wait_for_port(port, Duration::from_secs(30));
        Cluster { name: name.to_string(), port, config_dir }
    }

    /// Runs SQL as the `postgres` superuser over the local socket; panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// [`Cluster::psql`] in `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let output = as_postgres("psql", &["-p", &port, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(output.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop_cluster(&self.name);
    }
}

/// Stops and drops cluster `name` if it exists.
fn drop_cluster(name: &str) {
    let mut command = if is_root() { Command::new("pg_dropcluster") } else { Command::new("sudo") };
    if !is_root() {
        command.args(["-n", "pg_dropcluster"]);
    }
    let _ = command.args(["--stop", VERSION, name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// A PgBouncer on `port` in front of `127.0.0.1:server_port`, every database (`* = …`),
/// passwords checked against the server's own (`auth_type = scram-sha-256`, `auth_query` through
/// [`PGBOUNCER_AUTH_FUNCTION`] as `auth_user`, so roles made at run time log in), with
/// `pool_mode` and otherwise Debian's defaults (so it refuses unknown startup parameters and does
/// not track named prepared statements). Killed on drop.
///
/// `auth_user` is Sagaplane's own admin role, as docs/operations.md advises: PgBouncer 1.18 runs
/// `auth_query` in the database being logged into, and a silo tenant's database admits only its
/// owner (that admin) and the tenant's roles.
pub struct PgBouncer {
    pub port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

/// PgBouncer's documented way to look passwords up without a superuser: a `SECURITY DEFINER`
/// function, made in `template1` by [`PgBouncer::prepare_cluster`] so every database made later
/// (tenants' own) has it; `{auth_user}` may execute it.
pub const PGBOUNCER_AUTH_FUNCTION: &str = "CREATE SCHEMA IF NOT EXISTS pgbouncer; \
    CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename TEXT) RETURNS TABLE(usename name, passwd text) \
    LANGUAGE sql SECURITY DEFINER AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_usename $$; \
    REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC; \
    GRANT USAGE ON SCHEMA pgbouncer TO {auth_user}; \
    GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO {auth_user};";

impl PgBouncer {
    /// Makes the lookup function in `template1` for `auth_user`, an existing role (call
    /// before creating databases).
    pub fn prepare_cluster(cluster: &Cluster, auth_user: &str) {
        cluster.psql_in("template1", &PGBOUNCER_AUTH_FUNCTION.replace("{auth_user}", auth_user));
    }

    /// Starts PgBouncer; `auth_user` is `(role, password)`, the role given to
    /// [`PgBouncer::prepare_cluster`].
    pub fn start(
        port: u16,
        server_port: u16,
        pool_mode: &str,
        default_pool_size: u32,
        auth_user: (&str, &str),
    ) -> PgBouncer {
        let dir = std::env::temp_dir().join(format!("sagaplane-pgbouncer-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("pgbouncer dir");
        as_root("chown", &["postgres:postgres", path_str(&dir)]);
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={server_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {users}\n\
             auth_user = {auth_role}\nauth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)\n\
             pool_mode = {pool_mode}\ndefault_pool_size = {default_pool_size}\nmax_client_conn = 1000\n\
             logfile = {log}\npidfile =\n",
            users = path_str(&dir.join("userlist.txt")),
            log = path_str(&dir.join("pgbouncer.log")),
            auth_role = auth_user.0,
        );
        write_as_root(&dir.join("userlist.txt"), &format!("\"{}\" \"{}\"\n", auth_user.0, auth_user.1));
        write_as_root(&dir.join("pgbouncer.ini"), &ini);
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is installed (scripts/test installs Debian's pgbouncer)");
        let child = as_postgres(binary, &[path_str(&dir.join("pgbouncer.ini"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        wait_for_port(port, Duration::from_secs(20));
        PgBouncer { port, child, dir }
    }

    /// PgBouncer's own log (errors it answered with, e.g. prepared statements it lost).
    pub fn log(&self) -> String {
        let output = as_postgres("cat", &[path_str(&self.dir.join("pgbouncer.log"))]).output();
        output.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // The child is runuser; PgBouncer itself is its child. Stop it by its config's port owner.
        let _ = Command::new("pkill").args(["-f", path_str(&self.dir.join("pgbouncer.ini"))]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
