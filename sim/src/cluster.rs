//! A real Redis (or Valkey) Cluster on loopback, for the tests and for
//! rehearsing multi-node deployments: `redis-server` processes in a
//! temporary directory, joined with `redis-cli --cluster create`, torn down
//! when dropped. Nothing is mocked: it is the server the distribution ships.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the cluster may take to agree that every slot is served.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How many times a cluster that did not form is torn down and formed
/// again on fresh ports (a loaded machine, a port another process took
/// between being found free and being bound).
const FORM_ATTEMPTS: usize = 3;

/// Ports (client and bus) this process has handed to a server: never
/// handed out twice, so clusters started at once by one test binary
/// cannot collide however soon the system would reuse a port.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "{0} not found: run the tests with `cargo xtask test`, which fetches it, or install the Redis server (Debian/Ubuntu: apt-get install redis-server)"
    )]
    Missing(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the cluster did not form: {0}")]
    Form(String),
}

/// One server of the cluster.
#[derive(Debug)]
pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

/// A running cluster: `masters` masters, each with `replicas_per_master`
/// replicas.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Masters it was started with: a healthy cluster has as many live.
    masters: usize,
    /// How it is secured, if it is (`start_secured`).
    secured: Option<Secured>,
}

/// A cluster reached only over TLS (clients, replication and the cluster
/// bus), by ACL users: Redis's default user is off; `sls`, the user the
/// nodes log in as, may touch only `sls:*` keys and no dangerous command;
/// `admin` is the harness's own (forming the cluster, replication, health
/// checks).
pub struct Secured {
    /// The CA the servers' certificate chains to (PEM).
    pub ca_file: PathBuf,
    /// The `sls` user's password, in a file of mode 0600.
    pub password_file: PathBuf,
    admin_password: String,
}

impl std::fmt::Debug for Secured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The passwords stay out of debug output, the harness's too.
        f.debug_struct("Secured")
            .field("ca_file", &self.ca_file)
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

/// The ACL user the nodes log in as on a secured cluster.
pub const SECURED_USER: &str = "sls";

impl Secured {
    fn new(dir: &Path) -> Result<Self, ClusterError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ClusterError::Io { what, source }
        };
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(io("tls directory"))?;
        // The daemon's own PKI makes a CA and a server certificate for
        // localhost and 127.0.0.1; the servers use it for the cluster.
        slsd::server::pki::PkiPaths::new(&tls)
            .ensure("redis")
            .map_err(|e| ClusterError::Form(format!("certificates: {e}")))?;
        let mut rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
        let password = |rng: &mut rand::rand_core::UnwrapErr<rand::rngs::SysRng>| {
            let mut bytes = [0u8; 18];
            rand::Rng::fill_bytes(rng, &mut bytes);
            hex::encode(bytes)
        };
        let password_file = dir.join("sls-password");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&password_file).map_err(io("password file"))?;
        let sls_password = password(&mut rng);
        std::io::Write::write_all(&mut file, format!("{sls_password}\n").as_bytes())
            .map_err(io("password file"))?;
        Ok(Self {
            ca_file: tls.join("ca.pem"),
            password_file,
            admin_password: password(&mut rng),
        })
    }

    /// The `sls` user's password (what a node reads from the file).
    pub fn password(&self) -> Result<String, ClusterError> {
        let text =
            std::fs::read_to_string(&self.password_file).map_err(|source| ClusterError::Io {
                what: "password file".into(),
                source,
            })?;
        Ok(text.trim_end().to_owned())
    }

    /// A server's configuration: TLS everywhere, the users.
    fn config(&self, dir: &Path, port: u16) -> Result<String, ClusterError> {
        let tls = dir.join("tls");
        let paths = slsd::server::pki::PkiPaths::new(&tls);
        Ok(format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\n\
             tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n\
             tls-cluster yes\nuser default off\n\
             user admin on >{admin} ~* &* +@all\n\
             user {SECURED_USER} on >{sls} ~sls:* &* +@all -@dangerous\n\
             masteruser admin\nmasterauth {admin}\n",
            paths.server_cert().display(),
            paths.server_key().display(),
            // The cluster bus asks every peer for a client certificate.
            paths.client_cert(slsd::engine::Role::Admin).display(),
            paths.client_key(slsd::engine::Role::Admin).display(),
            self.ca_file.display(),
            admin = self.admin_password,
            sls = self.password()?,
        ))
    }
}

fn free_port() -> Result<u16, ClusterError> {
    // The cluster bus listens on port + 10000, so stay where that fits.
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| ClusterError::Io {
            what: "finding a free port".into(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| ClusterError::Io {
                what: "finding a free port".into(),
                source,
            })?
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            let mut handed = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
            let handed = handed.get_or_insert_with(HashSet::new);
            let pair = [port, port + 10_000];
            if pair.iter().all(|p| !handed.contains(p)) {
                handed.extend(pair);
                return Ok(port);
            }
        }
    }
    Err(ClusterError::Form("no free port pair".into()))
}

fn have(program: &'static str) -> Result<(), ClusterError> {
    match Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        _ => Err(ClusterError::Missing(program)),
    }
}

impl Cluster {
    /// Starts and joins a cluster; returns once every slot is served.
    pub fn start(masters: usize, replicas_per_master: usize) -> Result<Self, ClusterError> {
        Self::start_with(masters, replicas_per_master, false)
    }

    /// The same, reached only over TLS by ACL users ([`Secured`]).
    pub fn start_secured(masters: usize, replicas_per_master: usize) -> Result<Self, ClusterError> {
        Self::start_with(masters, replicas_per_master, true)
    }

    fn start_with(
        masters: usize,
        replicas_per_master: usize,
        secure: bool,
    ) -> Result<Self, ClusterError> {
        have("redis-server")?;
        have("redis-cli")?;
        let mut attempt = 1;
        loop {
            match Self::form(masters, replicas_per_master, secure) {
                Err(ClusterError::Form(why)) if attempt < FORM_ATTEMPTS => {
                    eprintln!("the cluster did not form ({why}); again on fresh ports");
                    attempt += 1;
                }
                formed => return formed,
            }
        }
    }

    /// One attempt at starting and joining the servers.
    fn form(
        masters: usize,
        replicas_per_master: usize,
        secure: bool,
    ) -> Result<Self, ClusterError> {
        let dir = tempfile::tempdir().map_err(|source| ClusterError::Io {
            what: "temporary directory".into(),
            source,
        })?;
        let secured = if secure {
            Some(Secured::new(dir.path())?)
        } else {
            None
        };
        let total = masters * (1 + replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = free_port()?;
            let child = spawn_server(dir.path(), port, secured.as_ref())?;
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self {
            dir,
            nodes,
            masters,
            secured,
        };
        for node in &cluster.nodes {
            cluster.wait_for(node.port, "PING", "PONG")?;
        }
        let mut create = cluster.cli_command();
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .output()
            .map_err(|source| ClusterError::Io {
                what: "redis-cli --cluster create".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(ClusterError::Form(
                String::from_utf8_lossy(&output.stdout).into_owned(),
            ));
        }
        for node in &cluster.nodes {
            cluster.wait_for(node.port, "CLUSTER INFO", "cluster_state:ok")?;
        }
        // Replicas sync after the slots are assigned; a write that waits
        // for a replica needs them online.
        cluster.wait_for_replicas(replicas_per_master)?;
        Ok(cluster)
    }

    /// `redis://127.0.0.1:PORT` of every node (`rediss://` when secured):
    /// what `--store` takes.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.secured.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How the cluster is secured, if it is.
    pub fn secured(&self) -> Option<&Secured> {
        self.secured.as_ref()
    }

    /// `redis-cli`, over TLS as the admin user on a secured cluster (the
    /// password in its environment, not its arguments).
    fn cli_command(&self) -> Command {
        let mut command = Command::new("redis-cli");
        if let Some(secured) = &self.secured {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(&secured.ca_file)
                .args(["--user", "admin"])
                .env("REDISCLI_AUTH", &secured.admin_password);
        }
        command
    }

    /// Runs a `redis-cli` command against the node on `port`.
    pub fn cli(&self, port: u16, command: &str) -> Result<String, ClusterError> {
        let output = self
            .cli_command()
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(command.split_whitespace())
            .output()
            .map_err(|source| ClusterError::Io {
                what: format!("redis-cli {command}"),
                source,
            })?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Ports of the nodes that are masters now.
    pub fn masters(&self) -> Result<Vec<u16>, ClusterError> {
        let mut masters = Vec::new();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            if self.cli(node.port, "ROLE")?.starts_with("master") {
                masters.push(node.port);
            }
        }
        Ok(masters)
    }

    /// Kills the server on `port` with SIGKILL (a crash, not a shutdown).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed server again on its port and directory: it rejoins
    /// the cluster as a replica of the node that took over from it.
    pub fn restart(&mut self, port: u16) -> Result<(), ClusterError> {
        let dir = self.dir.path().to_path_buf();
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && node.child.is_none()
        {
            node.child = Some(spawn_server(&dir, port, self.secured.as_ref())?);
        }
        self.wait_for(port, "PING", "PONG")
    }

    /// A backup of the cluster as an operator takes one: an RDB snapshot
    /// of every node (`SAVE`), then each node's `dump.rdb` and `nodes.conf`
    /// (which slots it serves, and its peers) copied to `to/<port>/`.
    pub fn backup_rdb(&self, to: &Path) -> Result<(), ClusterError> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let saved = self.cli(node.port, "SAVE")?;
            if saved.trim() != "OK" {
                return Err(ClusterError::Form(format!(
                    "SAVE on 127.0.0.1:{}: {saved:?}",
                    node.port
                )));
            }
            let from = self.dir.path().join(node.port.to_string());
            let into = to.join(node.port.to_string());
            for file in ["dump.rdb", "nodes.conf"] {
                std::fs::create_dir_all(&into)
                    .and_then(|()| std::fs::copy(from.join(file), into.join(file)))
                    .map_err(|source| ClusterError::Io {
                        what: format!("{} of 127.0.0.1:{}", file, node.port),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// The cluster's machines lost and rebuilt from a backup
    /// (`backup_rdb`): every node is stopped, everything it stored (its
    /// append-only file too) is deleted, the backup's files are put in its
    /// place, and it starts with the append-only file off, so that it loads
    /// the RDB; once the cluster is whole again each node turns it on
    /// (`CONFIG SET appendonly yes` writes it from what was loaded).
    pub fn restore_rdb(&mut self, from: &Path) -> Result<(), ClusterError> {
        let dir = self.dir.path().to_path_buf();
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for &port in &ports {
            self.kill(port);
        }
        for node in &self.nodes {
            let node_dir = dir.join(node.port.to_string());
            let io = |source| ClusterError::Io {
                what: format!("{}", node_dir.display()),
                source,
            };
            std::fs::remove_dir_all(&node_dir).map_err(io)?;
            std::fs::create_dir_all(&node_dir).map_err(io)?;
            for file in ["dump.rdb", "nodes.conf"] {
                let saved = from.join(node.port.to_string()).join(file);
                std::fs::copy(saved, node_dir.join(file)).map_err(io)?;
            }
        }
        for node in &mut self.nodes {
            node.child = Some(spawn(&dir, node.port, self.secured.as_ref(), false)?);
        }
        for node in &self.nodes {
            self.wait_for(node.port, "PING", "PONG")?;
        }
        for node in &self.nodes {
            self.wait_for(node.port, "CLUSTER INFO", "cluster_state:ok")?;
            self.wait_for(node.port, "CONFIG SET appendonly yes", "OK")?;
        }
        Ok(())
    }

    /// Waits until every master has `replicas` replicas online (after a
    /// restarted node has synced).
    pub fn wait_for_replicas(&self, replicas: usize) -> Result<(), ClusterError> {
        let linked = format!("connected_slaves:{replicas}");
        for port in self.masters()? {
            self.wait_for(port, "INFO replication", &linked)?;
            if replicas > 0 {
                self.wait_for(port, "INFO replication", "state=online")?;
            }
        }
        Ok(())
    }

    /// Waits until a live master serves every slot again (a replica took
    /// over a killed master) and the surviving nodes agree on it.
    pub fn wait_until_healthy(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_WITHIN;
        while self.masters()?.len() < self.masters {
            if Instant::now() > deadline {
                return Err(ClusterError::Form("no replica took over".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            self.wait_for(node.port, "CLUSTER INFO", "cluster_state:ok")?;
        }
        Ok(())
    }

    fn wait_for(&self, port: u16, command: &str, expect: &str) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let answer = self.cli(port, command)?;
            if answer.contains(expect) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::Form(format!(
                    "127.0.0.1:{port} answered {command} with {answer:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_server(dir: &Path, port: u16, secured: Option<&Secured>) -> Result<Child, ClusterError> {
    spawn(dir, port, secured, true)
}

/// `redis-server` for `port` in its directory under `dir`; `aof`: with its
/// append-only file (without, it loads `dump.rdb` at start).
fn spawn(
    dir: &Path,
    port: u16,
    secured: Option<&Secured>,
    aof: bool,
) -> Result<Child, ClusterError> {
    let node_dir: PathBuf = dir.join(port.to_string());
    let io = |source| ClusterError::Io {
        what: format!("{}", node_dir.display()),
        source,
    };
    std::fs::create_dir_all(&node_dir).map_err(io)?;
    let mut command = Command::new("redis-server");
    match secured {
        // Passwords in a file of the node's, not in its arguments.
        Some(secured) => {
            let config = node_dir.join("redis.conf");
            std::fs::write(&config, secured.config(dir, port)?).map_err(io)?;
            command.arg(config);
        }
        None => {
            command.args(["--port", &port.to_string()]);
        }
    }
    // Append-only file with fsync every second (the Redis default for
    // durability); replicas take over a master within about a second.
    command
        .args(["--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .arg("--cluster-config-file")
        .arg(node_dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&node_dir)
        .args(["--appendonly", if aof { "yes" } else { "no" }, "--save", ""])
        // Start a replica's first sync at once rather than after 5 s.
        .args(["--repl-diskless-sync-delay", "0"])
        .args(["--protected-mode", "no", "--loglevel", "warning"])
        .arg("--logfile")
        .arg(node_dir.join("redis.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ClusterError::Io {
            what: "starting redis-server".into(),
            source,
        })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
