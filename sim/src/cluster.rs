//! A real Redis (or Valkey) Cluster on loopback, for the tests and for
//! rehearsing multi-node deployments: `redis-server` processes in a
//! temporary directory, joined with `redis-cli --cluster create`, torn down
//! when dropped. Nothing is mocked: it is the server the distribution ships.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to agree that every slot is served.
const READY_WITHIN: Duration = Duration::from_secs(30);

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
            return Ok(port);
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
        have("redis-server")?;
        have("redis-cli")?;
        let dir = tempfile::tempdir().map_err(|source| ClusterError::Io {
            what: "temporary directory".into(),
            source,
        })?;
        let total = masters * (1 + replicas_per_master);
        let mut nodes = Vec::with_capacity(total);
        for _ in 0..total {
            let port = free_port()?;
            let child = spawn_server(dir.path(), port)?;
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self {
            dir,
            nodes,
            masters,
        };
        for node in &cluster.nodes {
            cluster.wait_for(node.port, "PING", "PONG")?;
        }
        let mut create = Command::new("redis-cli");
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

    /// `redis://127.0.0.1:PORT` of every node: what `--store` takes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a `redis-cli` command against the node on `port`.
    pub fn cli(&self, port: u16, command: &str) -> Result<String, ClusterError> {
        let output = Command::new("redis-cli")
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
            node.child = Some(spawn_server(&dir, port)?);
        }
        self.wait_for(port, "PING", "PONG")
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

fn spawn_server(dir: &Path, port: u16) -> Result<Child, ClusterError> {
    let node_dir: PathBuf = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).map_err(|source| ClusterError::Io {
        what: format!("{}", node_dir.display()),
        source,
    })?;
    // Append-only file with fsync every second (the Redis default for
    // durability); replicas take over a master within about a second.
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
        .arg("--cluster-config-file")
        .arg(node_dir.join("nodes.conf"))
        .arg("--dir")
        .arg(&node_dir)
        .args(["--appendonly", "yes", "--save", ""])
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
