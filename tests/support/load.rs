//! A load of enrolments, lockouts and logins on a real daemon, recording
//! what it acknowledged: what must survive a crash (`crash.rs`) and be in a
//! backup taken meanwhile (`backup.rs`). Every device is a DSC+ with the
//! same key and PIN; each task runs until its daemon stops answering.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sls_sim::client::Client;
use sls_sim::token::DscPlus;
use slsd::engine::Role;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, DeviceEntry, EnrollRequest, Operation, Reply, Verdict};
use tokio::task::JoinHandle;

use super::daemon::Daemon;

/// The daemon's limits for the load: no issuance limit in the way, and a
/// device locks after three wrong answers for longer than a test runs.
pub const CONFIG: &str = "[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n[lockout]\nfailures = 3\nfirst = \"10m\"\nmax = \"1h\"\n";

pub const KEY: [u8; 32] = [0x42; 32];
pub const PIN: &str = "4821";

pub fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

pub fn enroll(name: &str) -> Operation {
    Operation::Enroll(EnrollRequest {
        user: user(name),
        kind: DeviceKind::DscPlus,
        secret: Some(SecretKey::from_bytes(KEY.to_vec()).unwrap()),
        pin: Some(Pin::new(PIN)),
        label: "card".into(),
    })
}

/// What the card shows for `text` (the simulator's DSC+).
pub fn answer(text: &ChallengeText) -> String {
    let ChallengeText::Question(question) = text else {
        panic!("a DSC+ gets a question")
    };
    let key = SecretKey::from_bytes(KEY.to_vec()).unwrap();
    DscPlus::new(&key, &DeviceProfiles::defaults().unwrap())
        .unwrap()
        .respond(PIN, question)
        .unwrap()
        .to_string()
}

/// `name`'s devices as the operator lists them.
pub async fn listed(admin: &Client, name: &str) -> Vec<DeviceEntry> {
    match admin
        .call(Operation::ListDevices {
            user: user(name),
            page: Page::first(500),
        })
        .await
        .unwrap()
    {
        Reply::Devices { devices, .. } => devices,
        other => panic!("ListDevices answered {other:?}"),
    }
}

/// A login of `name`'s card on `gateway`, answered right: the verdict.
pub async fn log_in(gateway: &Client, name: &str, device: DeviceId) -> Reply {
    let Reply::Challenge {
        challenge, text, ..
    } = gateway
        .call(Operation::Challenge {
            user: user(name),
            device,
        })
        .await
        .unwrap()
    else {
        panic!("{name}: a challenge")
    };
    gateway
        .call(Operation::Verify {
            challenge,
            response: Answer::new(&answer(&text)),
        })
        .await
        .unwrap()
}

/// What the daemon acknowledged, in order.
#[derive(Debug, Default, Clone)]
pub struct Acknowledged {
    pub enrolled: Vec<(String, DeviceId)>,
    pub locked: Vec<(String, DeviceId)>,
    pub accepted: Vec<(ChallengeId, String)>,
    /// Right answers refused (a failed login): what no test may see.
    pub refused: Vec<String>,
}

async fn enrolments(admin: Client, ack: Arc<Mutex<Acknowledged>>) {
    for n in 0.. {
        let name = format!("new-{n}");
        match admin.call(enroll(&name)).await {
            Ok(Reply::Enrolled { device, .. }) => {
                ack.lock().unwrap().enrolled.push((name, device));
            }
            _ => return,
        }
    }
}

/// A challenge for `name`'s `device`; `None` once the daemon is gone.
async fn ask(
    gateway: &Client,
    name: &str,
    device: DeviceId,
) -> Option<(ChallengeId, ChallengeText)> {
    match gateway
        .call(Operation::Challenge {
            user: user(name),
            device,
        })
        .await
    {
        Ok(Reply::Challenge {
            challenge, text, ..
        }) => Some((challenge, text)),
        _ => None,
    }
}

/// Wrong answers on each target until it locks.
async fn lockouts(
    gateway: Client,
    targets: Vec<(String, DeviceId)>,
    ack: Arc<Mutex<Acknowledged>>,
) {
    for (name, device) in targets {
        loop {
            let Some((challenge, _)) = ask(&gateway, &name, device).await else {
                return;
            };
            match gateway
                .call(Operation::Verify {
                    challenge,
                    response: Answer::new("00000000"),
                })
                .await
            {
                Ok(Reply::Verdict(Verdict::LockedOut { .. })) => {
                    ack.lock().unwrap().locked.push((name.clone(), device));
                    break;
                }
                Ok(Reply::Verdict(_)) => {}
                _ => return,
            }
        }
    }
}

async fn logins(gateway: Client, name: String, device: DeviceId, ack: Arc<Mutex<Acknowledged>>) {
    loop {
        let Some((challenge, text)) = ask(&gateway, &name, device).await else {
            return;
        };
        let right = answer(&text);
        match gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new(&right),
            })
            .await
        {
            Ok(Reply::Verdict(Verdict::Accepted { .. })) => {
                ack.lock().unwrap().accepted.push((challenge, right));
            }
            Ok(other) => ack.lock().unwrap().refused.push(format!("{other:?}")),
            Err(_) => return,
        }
    }
}

/// The load under way: new enrolments (`new-0`, `new-1`, … one at a time),
/// 200 devices (`target-N`) locked one after the other, and logins of
/// `happy`.
pub struct Load {
    tasks: Vec<JoinHandle<()>>,
    ack: Arc<Mutex<Acknowledged>>,
}

impl Load {
    /// Enrols the targets and `happy`, then starts the three tasks.
    pub async fn start(daemon: &Daemon) -> Self {
        let admin = daemon.client(Role::Admin).await;
        let mut targets = Vec::new();
        for n in 0..200 {
            let name = format!("target-{n}");
            let Reply::Enrolled { device, .. } = admin.call(enroll(&name)).await.unwrap() else {
                panic!("enrol")
            };
            targets.push((name, device));
        }
        let Reply::Enrolled { device: happy, .. } = admin.call(enroll("happy")).await.unwrap()
        else {
            panic!("enrol")
        };
        let ack = Arc::new(Mutex::new(Acknowledged::default()));
        let tasks = vec![
            tokio::spawn(enrolments(
                daemon.client(Role::Admin).await,
                Arc::clone(&ack),
            )),
            tokio::spawn(lockouts(
                daemon.client(Role::Gateway).await,
                targets,
                Arc::clone(&ack),
            )),
            tokio::spawn(logins(
                daemon.client(Role::Gateway).await,
                "happy".into(),
                happy,
                Arc::clone(&ack),
            )),
        ];
        Self { tasks, ack }
    }

    /// What was acknowledged so far.
    pub fn acknowledged(&self) -> Acknowledged {
        self.ack.lock().unwrap().clone()
    }

    /// Stops the tasks: what they recorded is what was acknowledged.
    pub fn stop(self) -> Acknowledged {
        for task in self.tasks {
            task.abort();
        }
        std::mem::take(&mut *self.ack.lock().unwrap())
    }
}

/// `daemon` has every enrolment and lockout of `ack`, and accepts none of
/// its answers again.
pub async fn assert_kept(daemon: &Daemon, ack: &Acknowledged) {
    assert_eq!(ack.refused, Vec::<String>::new(), "right answers refused");
    let admin = daemon.client(Role::Admin).await;
    for (name, device) in &ack.enrolled {
        assert!(
            listed(&admin, name)
                .await
                .iter()
                .any(|d| d.device == *device),
            "acknowledged enrolment of {name} lost"
        );
    }
    for (name, device) in &ack.locked {
        let devices = listed(&admin, name).await;
        let entry = devices.iter().find(|d| d.device == *device).unwrap();
        assert!(
            entry.locked_for > Duration::from_secs(60),
            "acknowledged lockout of {name} lost: {:?}",
            entry.locked_for
        );
    }
    let gateway = daemon.client(Role::Gateway).await;
    for (challenge, right) in &ack.accepted {
        let reply = gateway
            .call(Operation::Verify {
                challenge: *challenge,
                response: Answer::new(right),
            })
            .await
            .unwrap();
        assert_eq!(
            reply,
            Reply::Verdict(Verdict::UnknownChallenge),
            "an answer accepted before was accepted again"
        );
    }
}
