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
/// Handshakes under way (not yet holding a connection slot).
pub const HANDSHAKES: &str = "sls_handshakes";
/// Connections refused during or right after the handshake, by `reason`
/// (`retry`: sent a QUIC Retry; `handshakes`, `address`: the handshake
/// budget; `connection_limit`: no connection slot for the role).
pub const REJECTED_HANDSHAKES: &str = "sls_rejected_handshakes_total";
/// Connections the daemon closed for misbehaving, by `reason`
/// (`malformed`, `write_stalled`).
pub const CLOSED_CONNECTIONS: &str = "sls_closed_connections_total";
/// Changes committed together in one durable transaction.
pub const COMMIT_BATCH: &str = "sls_commit_batch_size";
/// Push approvals' signatures checked together in one batch.
pub const PUSH_SIGNATURE_BATCH: &str = "sls_push_signature_batch_size";
/// Phone proofs (subscription, approval) that did not verify, by `operation`.
pub const BAD_PROOFS: &str = "sls_bad_proofs_total";
/// Connections made, by role and client name (the name in a certificate
/// `slsd cert issue` made; the role's own name for the shared ones).
pub const CLIENT_CONNECTIONS: &str = "sls_client_connections_total";
/// Pushes the phone answered "this was not me" (each counts as a failure).
pub const PUSH_DENIED: &str = "sls_push_denied_total";
/// Time from a push being sent to the phone's answer (approve or deny).
pub const PUSH_ANSWER_SECONDS: &str = "sls_push_answer_seconds";
/// Messages (SMS and voice codes) that reached their end, by `result`
/// (`delivered`: a bridge reported it; `failed`: every bridge tried failed
/// or none was left).
pub const SMS_DELIVERIES: &str = "sls_sms_deliveries_total";
/// Messages handed to another bridge, by `cause` (`timeout`: no
/// acknowledgement in time; `disconnected`: the bridge went away;
/// `reported`: the bridge reported a failure).
pub const SMS_FAILOVERS: &str = "sls_sms_failovers_total";
/// Live SMS/voice codes, unanswered pushes, messages awaiting a carrier
/// acknowledgement, connected bridges and phones right now.
pub const LIVE_CODES: &str = "sls_live_codes";
pub const PENDING_PUSHES: &str = "sls_pending_pushes";
pub const OUTBOX: &str = "sls_outbox";
/// Security events lost, by `reason` (`queue_full`: the sink is slower
/// than events come; `sink_failed`: a write failed).
pub const EVENTS_DROPPED: &str = "sls_events_dropped_total";
/// Reloads of the configuration file on SIGHUP, by `result` ("applied",
/// "refused": it changed a key that cannot change live, "invalid").
pub const CONFIG_RELOADS: &str = "sls_config_reloads_total";
/// Records a key rotation's pass has sealed again under the new key.
pub const KEYS_RESEALED: &str = "sls_keys_resealed_total";
/// Keys the keyring still holds besides the active one: above 0 while a
/// rotation's pass runs (or has stalled).
pub const KEYS_RETIRING: &str = "sls_keys_retiring";
/// Round trips to the shared store (redis backend), by `durable` ("yes":
/// the write waited for replicas in the same round trip).
pub const STORE_ROUND_TRIPS: &str = "sls_store_round_trips_total";
/// Records of the shared store refused because their authentication tag
/// did not match (edited, moved to another key, or replayed at another
/// version by someone with write access to Redis).
pub const STORE_RECORDS_REFUSED: &str = "sls_store_records_refused_total";
/// Decisions on the shared store taken again because a record changed
/// between their read and their write (another node got there first).
pub const STORE_CONFLICTS: &str = "sls_store_conflicts_total";

/// RADIUS datagrams dropped without an answer, by `reason`
/// (`unknown_client`, `rate_limited`, `malformed`, `unsupported`,
/// `no_message_authenticator`, `bad_message_authenticator`, `busy`,
/// `shutting_down`, `unencodable`).
pub const RADIUS_DROPPED: &str = "sls_radius_dropped_total";
/// RADIUS retransmissions answered from the duplicate cache or ignored
/// while their first copy was being answered.
pub const RADIUS_DUPLICATES: &str = "sls_radius_duplicates_total";
/// RADIUS answers sent, by `answer` (`accept`, `reject`, `challenge`).
pub const RADIUS_ANSWERS: &str = "sls_radius_answers_total";
/// Time from a RADIUS request's arrival to its answer.
pub const RADIUS_SECONDS: &str = "sls_radius_seconds";

/// Every metric the daemon exports, by name: what dashboards and
/// alerting rules may name (`contrib/`; `daemon/tests/contrib.rs` checks
/// them). A histogram also exports `NAME_bucket`, `NAME_sum` and
/// `NAME_count`.
pub const ALL: [&str; 30] = [
    REQUESTS,
    REQUEST_SECONDS,
    LOCKOUTS,
    OPEN_CHALLENGES,
    CONNECTIONS,
    HANDSHAKES,
    REJECTED_HANDSHAKES,
    CLOSED_CONNECTIONS,
    COMMIT_BATCH,
    PUSH_SIGNATURE_BATCH,
    BAD_PROOFS,
    CLIENT_CONNECTIONS,
    PUSH_DENIED,
    PUSH_ANSWER_SECONDS,
    SMS_DELIVERIES,
    SMS_FAILOVERS,
    LIVE_CODES,
    PENDING_PUSHES,
    OUTBOX,
    STORE_ROUND_TRIPS,
    STORE_RECORDS_REFUSED,
    STORE_CONFLICTS,
    RADIUS_DROPPED,
    RADIUS_DUPLICATES,
    RADIUS_ANSWERS,
    RADIUS_SECONDS,
    EVENTS_DROPPED,
    CONFIG_RELOADS,
    KEYS_RESEALED,
    KEYS_RETIRING,
];

/// The histograms among [`ALL`].
pub const HISTOGRAMS: [&str; 5] = [
    REQUEST_SECONDS,
    COMMIT_BATCH,
    PUSH_SIGNATURE_BATCH,
    PUSH_ANSWER_SECONDS,
    RADIUS_SECONDS,
];

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
                metrics_exporter_prometheus::Matcher::Full(PUSH_ANSWER_SECONDS.into()),
                &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(COMMIT_BATCH.into()),
                &[1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(PUSH_SIGNATURE_BATCH.into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0],
            )
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

/// Operation labels of [`REQUESTS`] and [`REQUEST_SECONDS`].
pub const OPERATIONS: [&str; 48] = [
    "devices",
    "challenge",
    "verify",
    "send_code",
    "verify_code",
    "code_status",
    "push",
    "await_push",
    "enroll",
    "revoke",
    "list_devices",
    "unlock",
    "stats",
    "enroll_phone",
    "bind_push_key",
    "carrier_subscribe",
    "ack",
    "phone_subscribe",
    "approve",
    "deny",
    "authorize_withdrawal",
    "start_activation",
    "set_identity",
    "set_opt_out",
    "share_device",
    "decide_share",
    "cancel_share",
    "shares",
    "issue_temporary_code",
    "order_replacement",
    "ship_replacement",
    "pending_activations",
    "audit_log",
    "start_phone_verification",
    "confirm_phone",
    "import_tokens",
    "tokens",
    "assign_token",
    "resync",
    "retire_tokens",
    "reset_pin",
    "change_pin",
    "complete_activation",
    "backup",
    "erase",
    "keyring",
    "upgrade",
    "invalid",
];

/// Outcome labels of [`REQUESTS`].
pub const OUTCOMES: [&str; 23] = [
    "ok",
    "accepted",
    "rejected",
    "expired",
    "locked_out",
    "unknown_challenge",
    "denied",
    "refused",
    "over_limit",
    "no_verified_number",
    "delivery_unavailable",
    "phone_unreachable",
    "store_unavailable",
    "unsupported",
    "forbidden",
    "rate_limited",
    "not_found",
    "too_many_challenges",
    "busy",
    "invalid_argument",
    "malformed",
    "shutting_down",
    "error",
];

/// Per-request metric handles, made once per label pair on first use.
///
/// The `counter!`/`histogram!` macros build and hash a labelled key (with
/// allocations) on every call; on the request path that showed in the
/// daemon's profile, so the handles are kept instead.
#[derive(Debug)]
pub struct RequestMetrics {
    counts: Vec<std::sync::OnceLock<metrics::Counter>>,
    latency: Vec<std::sync::OnceLock<metrics::Histogram>>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            counts: (0..OPERATIONS.len() * OUTCOMES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            latency: (0..OPERATIONS.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }
}

impl RequestMetrics {
    /// Counts one request of `operation` that ended in `outcome` (names
    /// from [`OPERATIONS`] and [`OUTCOMES`]; others count as "invalid"/"error").
    pub fn count(&self, operation: &'static str, outcome: &'static str) {
        let op = index_of(&OPERATIONS, operation);
        let out = index_of(&OUTCOMES, outcome);
        if let (Some(slot), Some(&op_name), Some(&out_name)) = (
            self.counts.get(op * OUTCOMES.len() + out),
            OPERATIONS.get(op),
            OUTCOMES.get(out),
        ) {
            slot.get_or_init(
                || metrics::counter!(REQUESTS, "operation" => op_name, "outcome" => out_name),
            )
            .increment(1);
        }
    }

    /// Records how long a request of `operation` took.
    pub fn latency(&self, operation: &'static str, seconds: f64) {
        let op = index_of(&OPERATIONS, operation);
        if let (Some(slot), Some(&name)) = (self.latency.get(op), OPERATIONS.get(op)) {
            slot.get_or_init(|| metrics::histogram!(REQUEST_SECONDS, "operation" => name))
                .record(seconds);
        }
    }
}

/// Position of `name` in `names`, or the last position (the catch-all).
fn index_of(names: &[&str], name: &str) -> usize {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or(names.len().saturating_sub(1))
}
