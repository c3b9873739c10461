//! The security event stream: what a SIEM wants from an authentication
//! service, as it happens, one JSON object per event with Elastic Common
//! Schema field names (`@timestamp`, `event.action`, `event.outcome`,
//! `user.name`, `source.ip`; sls's own under `sls.`), to standard output, a
//! file, or syslog (RFC 5424).
//!
//! Off the request path: [`emit`] puts the event on a bounded queue and
//! returns; one thread writes. A slow or failing sink can only lose events
//! (counted in `sls_events_dropped_total`, by `queue_full` or
//! `sink_failed`), never delay or fail a request.
//!
//! Never a secret, a code, a PIN or a phone number: events carry names,
//! ids, addresses and the audit log's details, which hold none.
//!
//! Like the `metrics` facade, the stream is installed once per process
//! (`slsd serve` does); without one, [`emit`] does nothing.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::EventSink;
use crate::identity::{DeviceId, Username};

/// The ECS version the field names follow.
const ECS_VERSION: &str = "8.11.0";
/// Events one write to a line sink takes before it flushes.
const BATCH: usize = 256;

/// What kind of thing happened (`event.category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Logins and what they do to a device (lockouts, denied pushes).
    Authentication,
    /// Users and devices changed (the audit log's entries).
    Iam,
    /// Connections and what they may call (certificates, roles).
    Network,
    /// Stored records (a shared-store record that failed its tag).
    Database,
    /// The daemon's own settings (a reload).
    Configuration,
}

impl Category {
    fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "authentication",
            Self::Iam => "iam",
            Self::Network => "network",
            Self::Database => "database",
            Self::Configuration => "configuration",
        }
    }

    /// `event.type`: what ECS calls such an event of this category.
    fn event_type(self, outcome: Outcome) -> &'static str {
        match (self, outcome) {
            (Self::Iam | Self::Configuration, _) => "change",
            (_, Outcome::Failure) => "denied",
            _ => "info",
        }
    }
}

/// `event.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// One security event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Timestamp,
    /// `event.action`: `device-locked`, `push-denied`, `certificate-refused`,
    /// `role-refused`, `sms-velocity-refused`, `record-refused`, or an audit
    /// log action (`enroll`, `unlock`, …).
    pub action: String,
    pub category: Category,
    pub outcome: Outcome,
    /// `event.reason`.
    pub reason: Option<String>,
    pub user: Option<String>,
    pub device: Option<DeviceId>,
    pub source: Option<IpAddr>,
    /// Who did it: the audit log's actor (a role, or `system`), or the
    /// connection's client certificate name.
    pub actor: Option<String>,
}

impl Event {
    pub fn new(at: Timestamp, action: &str, category: Category, outcome: Outcome) -> Self {
        Self {
            at,
            action: action.to_owned(),
            category,
            outcome,
            reason: None,
            user: None,
            device: None,
            source: None,
            actor: None,
        }
    }

    pub fn user(mut self, user: &Username) -> Self {
        self.user = Some(user.as_str().to_owned());
        self
    }

    pub fn device(mut self, device: DeviceId) -> Self {
        self.device = Some(device);
        self
    }

    pub fn source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The security event of an audit log entry (a registry change).
    pub fn audited(entry: &crate::wire::AuditRecord) -> Self {
        let mut event = Self::new(entry.at, &entry.action, Category::Iam, Outcome::Success)
            .actor(entry.actor.as_str());
        event.user = entry.user.as_ref().map(|u| u.as_str().to_owned());
        event.device = entry.device;
        if !entry.detail.is_empty() {
            event.reason = Some(entry.detail.clone());
        }
        event
    }

    /// The event as one ECS JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Map, Value, json};
        let mut event = Map::new();
        event.insert("kind".into(), "event".into());
        event.insert("category".into(), json!([self.category.as_str()]));
        event.insert(
            "type".into(),
            json!([self.category.event_type(self.outcome)]),
        );
        event.insert("action".into(), self.action.as_str().into());
        let outcome = match self.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        };
        event.insert("outcome".into(), outcome.into());
        if let Some(reason) = &self.reason {
            event.insert("reason".into(), reason.as_str().into());
        }
        let mut out = Map::new();
        out.insert("@timestamp".into(), rfc3339(self.at).into());
        out.insert("ecs".into(), json!({ "version": ECS_VERSION }));
        out.insert("service".into(), json!({ "name": "slsd", "type": "sls" }));
        out.insert("event".into(), Value::Object(event));
        if let Some(user) = &self.user {
            out.insert("user".into(), json!({ "name": user }));
        }
        if let Some(source) = self.source {
            out.insert("source".into(), json!({ "ip": source.to_string() }));
        }
        let mut sls = Map::new();
        if let Some(device) = self.device {
            sls.insert("device".into(), json!({ "id": device.0 }));
        }
        if let Some(actor) = &self.actor {
            sls.insert("actor".into(), actor.as_str().into());
        }
        if !sls.is_empty() {
            out.insert("sls".into(), Value::Object(sls));
        }
        Value::Object(out)
    }

    /// The event as an RFC 5424 syslog message: facility authpriv, warning
    /// for a failure and notice otherwise, the action as MSGID, the JSON
    /// object as the message.
    pub fn to_syslog(&self, host: &str, pid: u32) -> String {
        const AUTHPRIV: u8 = 10;
        let severity = match self.outcome {
            Outcome::Failure => 4,
            Outcome::Success => 5,
        };
        // MSGID: at most 32 printable US-ASCII characters, no space.
        let msgid: String = self
            .action
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        format!(
            "<{}>1 {} {host} slsd {pid} {} - {}",
            AUTHPRIV * 8 + severity,
            rfc3339(self.at),
            if msgid.is_empty() { "-" } else { &msgid },
            self.to_json()
        )
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(at: Timestamp) -> String {
    let seconds = at.0 / 1000 % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        crate::policy::calendar::Day::of(at).iso(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        at.0 % 1000
    )
}

/// Where the writing thread puts events.
#[derive(Debug)]
pub enum Writer {
    /// A JSON object a line (standard output, a file, a test's pipe).
    Lines(LineSink),
    /// RFC 5424 datagrams to a Unix socket.
    Unix(UnixDatagram, std::path::PathBuf),
    /// RFC 5424 datagrams over UDP.
    Udp(UdpSocket, SocketAddr),
}

/// A line sink: any writer, named for the log.
pub struct LineSink(pub Box<dyn Write + Send>);

impl std::fmt::Debug for LineSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineSink(..)")
    }
}

impl Writer {
    /// Opens the sink the configuration names (`None`: off). A file is
    /// opened for appending (made 0600 if new) and a socket bound now, so
    /// that a sink that cannot work stops the start instead of dropping
    /// every event.
    pub fn open(sink: &EventSink) -> std::io::Result<Option<Self>> {
        Ok(Some(match sink {
            EventSink::Off => return Ok(None),
            EventSink::Stdout => Self::Lines(LineSink(Box::new(std::io::stdout()))),
            EventSink::File(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.append(true).create(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                Self::Lines(LineSink(Box::new(options.open(path)?)))
            }
            EventSink::SyslogUnix(path) => Self::Unix(UnixDatagram::unbound()?, path.clone()),
            EventSink::SyslogUdp(addr) => {
                let local: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                Self::Udp(UdpSocket::bind(local)?, *addr)
            }
        }))
    }

    fn write(&mut self, event: &Event, host: &str, pid: u32) -> std::io::Result<()> {
        match self {
            Self::Lines(LineSink(out)) => {
                let mut line = event.to_json().to_string();
                line.push('\n');
                out.write_all(line.as_bytes())
            }
            Self::Unix(socket, path) => socket
                .send_to(event.to_syslog(host, pid).as_bytes(), &*path)
                .map(drop),
            Self::Udp(socket, addr) => socket
                .send_to(event.to_syslog(host, pid).as_bytes(), *addr)
                .map(drop),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Lines(LineSink(out)) => out.flush(),
            Self::Unix(..) | Self::Udp(..) => Ok(()),
        }
    }
}

/// A queue of events and the thread that writes them.
#[derive(Debug)]
pub struct EventStream {
    queue: Mutex<Option<SyncSender<Event>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    dropped: std::sync::Arc<AtomicU64>,
}

impl EventStream {
    /// Starts the writing thread on `writer`, with room for `queue` events.
    pub fn start(writer: Writer, queue: usize) -> std::io::Result<Self> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(queue);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        let counted = std::sync::Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name("slsd-events".into())
            .spawn(move || write_events(receiver, writer, &counted))?;
        Ok(Self {
            queue: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(thread)),
            dropped,
        })
    }

    /// Queues `event`, or drops and counts it if the queue is full: never
    /// waits.
    pub fn emit(&self, event: Event) {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = queue.as_ref() else {
            return;
        };
        match queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                drop_event(&self.dropped, "queue_full");
            }
        }
    }

    /// Events dropped so far (a full queue, a failed write).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes no more events, and waits up to `within` for the queued ones
    /// to be written.
    pub fn close(&self, within: Duration) {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let until = std::time::Instant::now() + within;
            while !thread.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

fn drop_event(dropped: &AtomicU64, reason: &'static str) {
    dropped.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(crate::metrics::EVENTS_DROPPED, "reason" => reason).increment(1);
}

/// The writing thread: takes what waits (up to `BATCH`), writes it, flushes.
fn write_events(queue: Receiver<Event>, mut writer: Writer, dropped: &AtomicU64) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "-".to_owned());
    let pid = std::process::id();
    let mut warned = false;
    while let Ok(first) = queue.recv() {
        let mut failed = 0;
        for event in std::iter::once(first).chain(queue.try_iter().take(BATCH - 1)) {
            if writer.write(&event, &host, pid).is_err() {
                failed += 1;
                drop_event(dropped, "sink_failed");
            }
        }
        if writer.flush().is_err() {
            failed += 1;
        }
        // One warning while the sink fails, not one per event.
        if failed > 0 && !warned {
            tracing::warn!("the security event sink fails: events are dropped");
        }
        warned = failed > 0;
    }
    let _ = writer.flush();
}

static STREAM: OnceLock<EventStream> = OnceLock::new();

/// Makes `stream` the process's; false if one already is.
pub fn install(stream: EventStream) -> bool {
    STREAM.set(stream).is_ok()
}

/// Puts the event `made` makes on the process's stream, if there is one
/// (without one, nothing is made).
pub fn emit(made: impl FnOnce() -> Event) {
    if let Some(stream) = STREAM.get() {
        stream.emit(made());
    }
}

/// Writes what is queued (up to `within`) and takes no more: at shutdown.
pub fn close(within: Duration) {
    if let Some(stream) = STREAM.get() {
        stream.close(within);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink that takes nothing until the test lets it, then keeps what it
    /// was given.
    struct Held {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, changed) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    fn lockout(n: u64) -> Event {
        Event::new(
            Timestamp(1_764_820_800_123 + n),
            "device-locked",
            Category::Authentication,
            Outcome::Failure,
        )
        .user(&Username::new("alice").unwrap())
        .device(DeviceId(n))
        .source("192.0.2.7".parse().unwrap())
        .reason("3 wrong answers")
    }

    #[test]
    fn an_event_has_the_ecs_fields_and_nothing_else() {
        let json = lockout(0).to_json();
        assert_eq!(json["@timestamp"], "2025-12-04T04:00:00.123Z");
        assert_eq!(json["ecs"]["version"], ECS_VERSION);
        assert_eq!(json["event"]["kind"], "event");
        assert_eq!(json["event"]["category"][0], "authentication");
        assert_eq!(json["event"]["type"][0], "denied");
        assert_eq!(json["event"]["action"], "device-locked");
        assert_eq!(json["event"]["outcome"], "failure");
        assert_eq!(json["event"]["reason"], "3 wrong answers");
        assert_eq!(json["user"]["name"], "alice");
        assert_eq!(json["source"]["ip"], "192.0.2.7");
        assert_eq!(json["sls"]["device"]["id"], 0);
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "@timestamp",
                "ecs",
                "event",
                "service",
                "sls",
                "source",
                "user"
            ]
        );
    }

    #[test]
    fn a_syslog_message_follows_rfc_5424() {
        let message = lockout(0).to_syslog("gw-1", 42);
        // authpriv (10) * 8 + warning (4) = 84; version 1.
        let expected = "<84>1 2025-12-04T04:00:00.123Z gw-1 slsd 42 device-locked - {";
        assert!(message.starts_with(expected), "{message}");
        let json: serde_json::Value =
            serde_json::from_str(message.split_once(" - ").unwrap().1).unwrap();
        assert_eq!(json["event"]["action"], "device-locked");
    }

    #[test]
    fn a_stuck_sink_drops_past_the_queue_and_never_holds_the_caller() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Held {
            gate: Arc::clone(&gate),
            written: Arc::clone(&written),
        };
        let stream = EventStream::start(Writer::Lines(LineSink(Box::new(sink))), 4).unwrap();
        // The writer takes the first event and sticks in its write; four
        // more fill the queue; the other 95 are dropped, at once.
        let started = std::time::Instant::now();
        for n in 0..100 {
            stream.emit(lockout(n));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // The writer may not have taken the first one yet when the rest
        // came: 95 or 96 dropped.
        let dropped = stream.dropped();
        assert!((95..=96).contains(&dropped), "{dropped} dropped");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        stream.close(Duration::from_secs(5));
        let written = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count() as u64, 100 - dropped);
        for line in written.lines() {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["event"]["action"], "device-locked");
        }
    }

    #[test]
    fn a_failing_sink_counts_what_it_loses() {
        let stream = EventStream::start(Writer::Lines(LineSink(Box::new(Failing))), 16).unwrap();
        for n in 0..10 {
            stream.emit(lockout(n));
        }
        stream.close(Duration::from_secs(5));
        assert_eq!(stream.dropped(), 10);
    }

    #[test]
    fn a_closed_stream_takes_nothing() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Held {
            gate: Arc::new((Mutex::new(true), std::sync::Condvar::new())),
            written: Arc::clone(&written),
        };
        let stream = EventStream::start(Writer::Lines(LineSink(Box::new(sink))), 16).unwrap();
        stream.emit(lockout(1));
        stream.close(Duration::from_secs(5));
        stream.emit(lockout(2));
        assert_eq!(
            String::from_utf8(written.lock().unwrap().clone())
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
}
