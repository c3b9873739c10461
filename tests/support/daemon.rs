//! A real `slsd serve` in a temporary data directory on ephemeral ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sls_sim::client::{Client, ClientError, Transport};
use sls_sim::daemon::LocalDaemon;
use slsd::engine::Role;
use slsd::server::pki;

use super::binary;

/// A running daemon with its data directory; stopped when dropped.
pub struct Daemon {
    process: LocalDaemon,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The RADIUS front end's address, when its configuration has one.
    pub radius: Option<SocketAddr>,
    /// The TCP/TLS fallback's address (every test daemon has one).
    pub tcp: SocketAddr,
    pub data_dir: PathBuf,
    config: PathBuf,
    /// What `client` and `connect` connect over.
    transport: Transport,
}

impl Daemon {
    /// Starts a daemon on `data_dir`, on ephemeral ports, with more
    /// configuration: `server_keys` go in its `[server]` table, `sections`
    /// are whole tables.
    pub fn start(data_dir: &Path, server_keys: &str, sections: &str) -> Self {
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, config_text(server_keys, sections)).unwrap();
        Self::start_with(data_dir, &config)
    }

    /// Rewrites the configuration file as `start` writes it, with these
    /// keys and tables instead, and reloads it ([`Daemon::reload_file`]).
    pub fn reload(&self, server_keys: &str, sections: &str) -> &'static str {
        self.reload_file(&config_text(server_keys, sections))
    }

    /// Writes `text` as the configuration file and sends SIGHUP; returns
    /// once the daemon has counted the reload, with its result
    /// (`sls_config_reloads_total{result}`: applied, refused, invalid).
    /// Blocking.
    pub fn reload_file(&self, text: &str) -> &'static str {
        const RESULTS: [&str; 3] = ["applied", "refused", "invalid"];
        let count =
            |result| self.series(&format!("sls_config_reloads_total{{result=\"{result}\"}}"));
        let before = RESULTS.map(count);
        std::fs::write(&self.config, text).unwrap();
        let hangup = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(hangup.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            for (result, before) in RESULTS.into_iter().zip(before) {
                if count(result) > before {
                    return result;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the daemon did not count the reload")
    }

    fn start_with(data_dir: &Path, config: &Path) -> Self {
        let process = LocalDaemon::spawn(&binary("slsd"), config, data_dir).expect("start slsd");
        Self {
            quic: process.quic,
            metrics: process.metrics,
            radius: process.radius,
            tcp: process.tcp.expect("the test daemon listens on TCP"),
            process,
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
            transport: Transport::Quic,
        }
    }

    /// The same daemon, whose `client` and `connect` use `transport`.
    pub fn over(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Kills the daemon with SIGKILL and starts it again on the same data
    /// directory and configuration.
    pub fn crash_and_restart(mut self) -> Self {
        self.process.crash();
        Self::start_with(&self.data_dir, &self.config).over(self.transport)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid().expect("the daemon runs")
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.process.stop()
    }

    /// Stops and starts again on the same data directory and configuration.
    pub fn restart(mut self) -> Self {
        assert_eq!(self.process.stop(), Some(0), "clean shutdown");
        Self::start_with(&self.data_dir, &self.config).over(self.transport)
    }

    pub fn cert(&self, role: Role) -> (PathBuf, PathBuf) {
        let name = role.as_str();
        (
            self.data_dir.join(format!("{name}.pem")),
            self.data_dir.join(format!("{name}.key")),
        )
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// The Prometheus text of `/metrics` (blocking; call it off the runtime).
    pub fn metrics_text(&self) -> String {
        metrics_at(self.metrics)
    }

    /// The sum of every series of the metric `name` (all its labels),
    /// from `/metrics` (blocking; call it off the runtime).
    pub fn metric_total(&self, name: &str) -> u64 {
        metric_at(self.metrics, name)
    }

    /// The value of one series (`name{labels}`, as `/metrics` writes it;
    /// 0 while it has none), blocking.
    pub fn series(&self, series: &str) -> u64 {
        self.metrics_text()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// The TLS configuration of a client with `role`'s certificate.
    pub fn tls(&self, role: Role) -> rustls::ClientConfig {
        let (cert, key) = self.cert(role);
        pki::client_tls(&self.ca(), &cert, &key).expect("client TLS")
    }

    /// A client with `role`'s certificate, over the daemon's transport.
    pub async fn client(&self, role: Role) -> Client {
        self.connect(self.tls(role)).await.expect("connect")
    }

    /// A client with a TLS configuration of the test's, over the daemon's
    /// transport (checking the server certificate against `localhost`).
    pub async fn connect(&self, tls: rustls::ClientConfig) -> Result<Client, ClientError> {
        self.connect_named("localhost", tls).await
    }

    /// The same, checking the server certificate against `server_name`.
    pub async fn connect_named(
        &self,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Client, ClientError> {
        match self.transport {
            Transport::Quic => Client::connect_named(self.quic, server_name, tls).await,
            Transport::Tcp => Client::connect_tcp(self.tcp, server_name, tls).await,
        }
    }
}

/// A test daemon's configuration file: ephemeral ports, then `server_keys`
/// in its `[server]` table, then whole `sections`.
fn config_text(server_keys: &str, sections: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntcp-listen = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n{server_keys}\n{sections}"
    )
}

/// `slsd admin ARGS` against `daemon`, with the admin certificate of its
/// data directory.
pub fn admin(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary("slsd"))
        .arg("admin")
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .arg("--addr")
        .arg(daemon.quic.to_string())
        .args(args)
        .output()
        .expect("run slsd admin")
}

/// `slsd admin ARGS` as a person at a terminal runs it: `answer` is given
/// the first line the command writes on stderr (its question) and returns
/// what to type on stdin.
pub fn admin_asked(
    daemon: &Daemon,
    args: &[&str],
    answer: impl FnOnce(&str) -> String,
) -> std::process::Output {
    use std::io::{BufRead, Read, Write};
    use std::process::Stdio;
    let mut child = std::process::Command::new(binary("slsd"))
        .arg("admin")
        .arg("--data-dir")
        .arg(&daemon.data_dir)
        .arg("--addr")
        .arg(daemon.quic.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run slsd admin");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut question = String::new();
    stderr.read_line(&mut question).unwrap();
    let typed = answer(question.trim_end());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    let mut rest = Vec::new();
    stderr.read_to_end(&mut rest).unwrap();
    let mut output = child.wait_with_output().unwrap();
    output.stderr = [question.into_bytes(), rest].concat();
    output
}

/// The JSON a successful `slsd admin ARGS --json` run prints.
pub fn admin_json(daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let output = admin(daemon, &with_json);
    serde_json::from_str(&super::stdout_ok(&output)).expect("JSON on stdout")
}

/// The one stderr line of a failing `slsd admin ARGS` run (nothing on
/// stdout).
pub fn admin_failure(daemon: &Daemon, args: &[&str]) -> String {
    let output = admin(daemon, args);
    assert!(!output.status.success(), "{args:?} succeeded");
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr.trim_end().to_owned()
}

/// The active at-rest key and the retiring ones, asked on `admin`'s
/// connection.
pub async fn keyring(admin: &Client) -> (u32, Vec<u32>) {
    use slsd::wire::{Operation, Reply};
    match admin
        .call(Operation::Keyring { rotate: false })
        .await
        .unwrap()
    {
        Reply::Keyring {
            active, retiring, ..
        } => (active, retiring),
        other => panic!("the keyring: {other:?}"),
    }
}

/// The Prometheus text of the metrics endpoint at `addr` (blocking).
pub fn metrics_at(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    text
}

/// The sum of every series of the metric `name` at `addr` (blocking).
pub fn metric_at(addr: SocketAddr, name: &str) -> u64 {
    metrics_at(addr)
        .lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
