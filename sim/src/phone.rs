//! Emulated IB Key phone apps for push approval.
//!
//! One app is one phone-role connection; it subscribes for any number of
//! devices (one app, many users), proving each device key by signing the
//! connection's TLS exporter value. When a notice comes, the emulated user
//! picks the number the login page shows them — a login flow tells the
//! [`Matcher`] which number that is — and the app approves with a
//! signature, or misbehaves as a test asks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use slsd::identity::{DeviceId, PushId};
use slsd::otp::push::{self, PushSigner};
use slsd::wire::{Operation, Reply, Verdict};

use crate::client::{Client, ClientError, Pipeline};

/// What the emulated user does with a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Picks the number the login shows and approves.
    Approve,
    /// "This was not me."
    Deny,
    /// Picks one of the other numbers.
    WrongNumber,
    /// Picks the right number, but the signature is another key's.
    BadProof,
    /// Never answers (the push expires).
    Ignore,
}

enum Slot {
    Number(u8),
    Waiting(oneshot::Sender<u8>),
}

/// The numbers login pages show, by push: what the person at the login
/// sees and then looks for on the phone.
#[derive(Default)]
pub struct Matcher {
    slots: Mutex<HashMap<PushId, Slot>>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Matcher(..)")
    }
}

impl Matcher {
    /// The login page of `push` shows `number`.
    pub fn shown(&self, push: PushId, number: u8) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.remove(&push) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(number);
            }
            _ => {
                slots.insert(push, Slot::Number(number));
            }
        }
    }

    /// The person reads `number` off a login that does not say which push
    /// it is (a RADIUS prompt) and types it into the notice open on the
    /// phone: every push waiting for its number gets it. How many did.
    pub fn shown_to_waiting(&self, number: u8) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting: Vec<PushId> = slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Waiting(_)))
            .map(|(push, _)| *push)
            .collect();
        for push in &waiting {
            if let Some(Slot::Waiting(tx)) = slots.remove(push) {
                let _ = tx.send(number);
            }
        }
        waiting.len()
    }

    /// The number shown for `push`, once the login has shown it.
    async fn number(&self, push: PushId) -> Option<u8> {
        let rx = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            match slots.remove(&push) {
                Some(Slot::Number(n)) => return Some(n),
                _ => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(push, Slot::Waiting(tx));
                    rx
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), rx)
            .await
            .ok()?
            .ok()
    }
}

/// Tallies of what an app saw and did.
#[derive(Debug, Default)]
pub struct PhoneStats {
    pub notices: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

struct Devices {
    signers: HashMap<DeviceId, Arc<PushSigner>>,
    behaviour: HashMap<DeviceId, Behaviour>,
}

/// A phone app connected to the daemon.
pub struct PhoneApp {
    client: Arc<Client>,
    requests: Pipeline,
    devices: Arc<Mutex<Devices>>,
    stats: Arc<PhoneStats>,
    /// Takes the notices and answers them.
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PhoneApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneApp").finish_non_exhaustive()
    }
}

impl PhoneApp {
    /// An app on `client` (a phone-role connection), not yet subscribed.
    /// It subscribes and answers on one stream: its answers leave on the
    /// connection its subscriptions were proven on, over QUIC or TCP.
    pub async fn connect(client: Client, matcher: Arc<Matcher>) -> Result<Self, ClientError> {
        let (requests, mut notices) = client.subscription(4096).await?;
        let devices = Arc::new(Mutex::new(Devices {
            signers: HashMap::new(),
            behaviour: HashMap::new(),
        }));
        let stats = Arc::<PhoneStats>::default();
        let answerer = Answerer {
            requests: requests.clone(),
            devices: Arc::clone(&devices),
            stats: Arc::clone(&stats),
            matcher: Arc::clone(&matcher),
        };
        let reader = tokio::spawn(async move {
            while let Some(notice) = notices.recv().await {
                answerer.notice(notice.reply);
            }
        });
        Ok(Self {
            client: Arc::new(client),
            requests,
            devices,
            stats,
            reader,
        })
    }

    pub fn stats(&self) -> &PhoneStats {
        &self.stats
    }

    pub fn set_behaviour(&self, device: DeviceId, behaviour: Behaviour) {
        lock(&self.devices).behaviour.insert(device, behaviour);
    }

    /// Subscribes for devices on a new stream, each proof signed by its
    /// own key; the daemon's answer for each, in order.
    pub async fn subscribe(
        &self,
        devices: &[(DeviceId, Arc<PushSigner>)],
    ) -> Result<Vec<Reply>, ClientError> {
        let proofs: Vec<_> = devices
            .iter()
            .map(|(device, signer)| (*device, signer.as_ref(), Arc::clone(signer)))
            .collect();
        self.subscribe_proving(&proofs).await
    }

    /// Subscribes proving each device with the first key and keeping the
    /// second for approvals (tests prove with a wrong key).
    pub async fn subscribe_proving(
        &self,
        devices: &[(DeviceId, &PushSigner, Arc<PushSigner>)],
    ) -> Result<Vec<Reply>, ClientError> {
        let binding = self.requests.binding()?;
        // Known before the first notice can come (a notice for a device
        // without its key is ignored); forgotten again if refused.
        {
            let mut known = lock(&self.devices);
            for (device, _, signer) in devices {
                known.signers.insert(*device, Arc::clone(signer));
            }
        }
        // Proven together: the daemon answers them in one go.
        let mut calls = tokio::task::JoinSet::new();
        for (place, (device, prover, _)) in devices.iter().enumerate() {
            let operation = Operation::PhoneSubscribe {
                device: *device,
                proof: prover.sign(&push::subscribe_message(&binding, *device)),
            };
            let requests = self.requests.clone();
            calls.spawn(async move { (place, requests.call(operation).await) });
        }
        let mut replies = vec![Reply::Done; devices.len()];
        while let Some(done) = calls.join_next().await {
            let (place, reply) = done.map_err(|e| ClientError::Broken(e.to_string()))?;
            if let Some(slot) = replies.get_mut(place) {
                *slot = reply?;
            }
        }
        let mut known = lock(&self.devices);
        for ((device, _, _), reply) in devices.iter().zip(&replies) {
            if *reply != Reply::Subscribed {
                known.signers.remove(device);
            }
        }
        Ok(replies)
    }

    /// Disconnects: the daemon then answers pushes `PhoneUnreachable`.
    pub fn stop(&self) {
        self.reader.abort();
        self.client.close();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Answers notices as each device's behaviour says.
#[derive(Clone)]
struct Answerer {
    requests: Pipeline,
    devices: Arc<Mutex<Devices>>,
    stats: Arc<PhoneStats>,
    matcher: Arc<Matcher>,
}

impl Answerer {
    fn notice(&self, reply: Reply) {
        let Reply::PushNotice {
            push: id, device, ..
        } = reply
        else {
            return;
        };
        self.stats.notices.fetch_add(1, Ordering::Relaxed);
        let (signer, behaviour) = {
            let devices = lock(&self.devices);
            let behaviour = devices
                .behaviour
                .get(&device)
                .copied()
                .unwrap_or(Behaviour::Approve);
            (devices.signers.get(&device).cloned(), behaviour)
        };
        let Some(signer) = signer else { return };
        let this = self.clone();
        tokio::spawn(async move {
            let operation = match behaviour {
                Behaviour::Ignore => return,
                Behaviour::Deny => Operation::Deny { push: id },
                Behaviour::Approve | Behaviour::WrongNumber | Behaviour::BadProof => {
                    let Some(shown) = this.matcher.number(id).await else {
                        return;
                    };
                    // The number the user types (the login page shows it).
                    let chosen = match behaviour {
                        Behaviour::WrongNumber => 10 + (shown.saturating_sub(10) + 1) % 90,
                        _ => shown,
                    };
                    let message = push::approve_message(id, device, chosen);
                    let proof = match behaviour {
                        Behaviour::BadProof => PushSigner::from_seed([0x5a; 32]).sign(&message),
                        _ => signer.sign(&message),
                    };
                    Operation::Approve {
                        push: id,
                        chosen,
                        proof,
                    }
                }
            };
            let tally = match this.requests.call(operation).await {
                Ok(Reply::Verdict(Verdict::Accepted { .. })) => &this.stats.accepted,
                _ => &this.stats.refused,
            };
            tally.fetch_add(1, Ordering::Relaxed);
        });
    }
}
