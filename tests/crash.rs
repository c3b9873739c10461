//! Crash safety: the daemon is killed with SIGKILL in the middle of a load
//! of enrolments, lockouts and logins, and started again on the same data
//! directory. Everything it acknowledged must be there — every enrolled
//! device, every lockout — and no answer it accepted before the crash may
//! be accepted again.

mod support;

use support::daemon::Daemon;
use support::load::{self, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_to_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", load::CONFIG);
    let load = Load::start(&daemon).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let daemon = tokio::task::block_in_place(|| daemon.crash_and_restart());
    // Their connections would only notice the dead daemon at the idle
    // timeout; what they recorded so far is what was acknowledged.
    let ack = load.stop();
    eprintln!(
        "acknowledged before the crash: {} enrolments, {} lockouts, {} logins",
        ack.enrolled.len(),
        ack.locked.len(),
        ack.accepted.len()
    );
    assert!(!ack.enrolled.is_empty() && !ack.locked.is_empty() && !ack.accepted.is_empty());
    load::assert_kept(&daemon, &ack).await;
}
