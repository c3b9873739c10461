//! Metric names, in one place, and the Prometheus recorder.
//!
//! Code records through the `metrics` facade with these names; `slsd
//! serve` installs the Prometheus recorder and serves its rendering at
//! `/metrics`. Labels never carry codes, secrets or PINs.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests handled, by `operation` and `outcome` (reply or verdict name).
pub const REQUESTS: &str = "sls_requests_total";
/// Time from a request's arrival to its reply being queued, by `operation`.
pub const REQUEST_SECONDS: &str = "sls_request_seconds";
/// Devices locked out after repeated failures.
pub const LOCKOUTS: &str = "sls_lockouts_total";
/// Challenges open right now.
pub const OPEN_CHALLENGES: &str = "sls_open_challenges";
/// QUIC connections open right now.
pub const CONNECTIONS: &str = "sls_connections";
/// Connections refused during or right after the handshake, by `reason`.
pub const REJECTED_HANDSHAKES: &str = "sls_rejected_handshakes_total";
/// Changes committed together in one durable transaction.
pub const COMMIT_BATCH: &str = "sls_commit_batch_size";

/// Installs the Prometheus recorder for this process.
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(REQUEST_SECONDS.into()),
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(COMMIT_BATCH.into()),
                &[1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}
