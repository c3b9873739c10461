//! A local `slsd serve` child process: started, told apart from its
//! startup lines (`slsd: listening on …`, `slsd: metrics on …`,
//! `slsd: TCP/TLS fallback on …`, `slsd: RADIUS on …`, `slsd: ready`), and stopped with SIGTERM. `sls-sim bench` and the
//! end-to-end tests both run the daemon this way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped daemon may take to exit before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A running daemon; stopped (SIGTERM, then wait) when dropped.
#[derive(Debug)]
pub struct LocalDaemon {
    child: Option<Child>,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The RADIUS front end's address, when it listens.
    pub radius: Option<SocketAddr>,
    /// The TCP/TLS fallback's address, when it listens.
    pub tcp: Option<SocketAddr>,
}

impl LocalDaemon {
    /// Runs `slsd serve --config CONFIG --data-dir DATA_DIR` and waits
    /// until it says it is ready.
    pub fn spawn(slsd: &Path, config: &Path, data_dir: &Path) -> std::io::Result<Self> {
        let mut child = Command::new(slsd)
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("slsd has no stdout"))?;
        let mut quic = None;
        let mut metrics = None;
        let mut radius = None;
        let mut tcp = None;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("slsd: listening on ") {
                quic = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("slsd: metrics on http://") {
                metrics = rest.trim_end_matches("/metrics").parse().ok();
            }
            if let Some(rest) = line.strip_prefix("slsd: RADIUS on ") {
                radius = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.strip_prefix("slsd: TCP/TLS fallback on ") {
                tcp = rest.split(' ').next().and_then(|a| a.parse().ok());
            }
            if line == "slsd: ready" {
                break;
            }
        }
        match (quic, metrics) {
            (Some(quic), Some(metrics)) => Ok(Self {
                child: Some(child),
                quic,
                metrics,
                radius,
                tcp,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::io::Error::other("slsd did not say where it listens"))
            }
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process outright (SIGKILL: no shutdown, no flush), as a
    /// crash or power loss would, and reaps it.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit; kills it if it takes longer
    /// than 20 s. Returns the exit code (None if killed or already stopped).
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + STOP_WITHIN;
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
}

impl Drop for LocalDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
