//! A real `slsd serve` in a temporary data directory on ephemeral ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sls_sim::client::Client;
use slsd::engine::Role;

use super::binary;

/// A running daemon; stopped (SIGTERM, then wait) when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    config: PathBuf,
}

impl Daemon {
    /// Starts a daemon on `data_dir`, on ephemeral ports, with more
    /// configuration: `server_keys` go in its `[server]` table, `sections`
    /// are whole tables.
    pub fn start(data_dir: &Path, server_keys: &str, sections: &str) -> Self {
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n{server_keys}\n{sections}"
            ),
        )
        .unwrap();
        Self::start_with(data_dir, &config)
    }

    fn start_with(data_dir: &Path, config: &Path) -> Self {
        let mut child = Command::new(binary("slsd"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start slsd");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut quic = None;
        let mut metrics = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read slsd stdout");
            if let Some(rest) = line.strip_prefix("slsd: listening on ") {
                quic = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("slsd: metrics on http://") {
                metrics = rest.trim_end_matches("/metrics").parse().ok();
            }
            if line == "slsd: ready" || Instant::now() > deadline {
                break;
            }
        }
        Self {
            child: Some(child),
            quic: quic.expect("slsd printed its QUIC address"),
            metrics: metrics.expect("slsd printed its metrics address"),
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    /// Stops and starts again on the same data directory and configuration.
    pub fn restart(mut self) -> Self {
        assert_eq!(self.terminate(), Some(0), "clean shutdown");
        Self::start_with(&self.data_dir.clone(), &self.config.clone())
    }

    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// A client with `role`'s certificate.
    pub async fn client(&self, role: Role) -> Client {
        let (cert, key) = self.cert(role);
        Client::connect(self.quic, &self.ca(), &cert, &key)
            .await
            .expect("connect")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}
