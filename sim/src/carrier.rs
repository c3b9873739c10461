//! An emulated SMS/voice carrier: delivery bridges that subscribe to the
//! daemon's carrier channel, and the phones' inboxes the messages land in.
//!
//! A bridge takes each message, puts it in the recipient's inbox and
//! acknowledges it — or, to test failover, stays silent or reports a
//! failure. A login flow (or a test) waits on the inbox of the user's
//! number for the code, as a person waits for the text.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use slsd::identity::MessageId;
use slsd::phone::{Channel, PhoneNumber};
use slsd::wire::{DeliveryReport, Operation, Reply, Response};

use crate::client::{Client, ClientError, Pipeline};

/// What a bridge does with the messages it is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Deliver to the inbox and acknowledge `Delivered`.
    Deliver,
    /// Take the message and never answer (a provider that hangs).
    Silent,
    /// Report `Failed` with this reason without delivering.
    Fail(String),
}

/// A message as the phone shows it. `Debug` leaves the text (and its
/// code) out.
#[derive(Clone, PartialEq, Eq)]
pub struct Received {
    pub message: MessageId,
    pub channel: Channel,
    pub text: String,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("message", &self.message)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Received {
    /// The code in the text ("... code is 123456. ...").
    pub fn code(&self) -> Option<String> {
        let (_, rest) = self.text.split_once("code is ")?;
        let code: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        (!code.is_empty()).then_some(code)
    }
}

#[derive(Default)]
struct Boxes {
    mail: HashMap<String, VecDeque<Received>>,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Received>>>,
}

/// Every emulated phone's messages, by number.
#[derive(Default)]
pub struct Inbox {
    boxes: Mutex<Boxes>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inbox(..)")
    }
}

impl Inbox {
    fn deliver(&self, to: &PhoneNumber, message: Received) {
        let key = to.to_string();
        let mut boxes = self.boxes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut message = Some(message);
        if let Some(waiters) = boxes.waiting.get_mut(&key) {
            while let (Some(waiter), Some(m)) = (waiters.pop_front(), message.take()) {
                if let Err(m) = waiter.send(m) {
                    message = Some(m);
                }
            }
            if waiters.is_empty() {
                boxes.waiting.remove(&key);
            }
        }
        if let Some(message) = message {
            boxes.mail.entry(key).or_default().push_back(message);
        }
    }

    /// The next message to `to`, waiting at most `timeout` for it.
    pub async fn next(&self, to: &PhoneNumber, timeout: Duration) -> Option<Received> {
        let key = to.to_string();
        let waiter = {
            let mut boxes = self.boxes.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(message) = boxes.mail.get_mut(&key).and_then(VecDeque::pop_front) {
                return Some(message);
            }
            let (tx, rx) = oneshot::channel();
            boxes.waiting.entry(key).or_default().push_back(tx);
            rx
        };
        tokio::time::timeout(timeout, waiter).await.ok()?.ok()
    }

    /// Messages to `to` not yet taken.
    pub fn pending(&self, to: &PhoneNumber) -> usize {
        let boxes = self.boxes.lock().unwrap_or_else(PoisonError::into_inner);
        boxes.mail.get(&to.to_string()).map_or(0, VecDeque::len)
    }
}

/// A connected delivery bridge.
#[derive(Debug)]
pub struct Bridge {
    client: Arc<Client>,
    behaviour: Arc<Mutex<Behaviour>>,
    handed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Subscribes on `client` (a carrier-role connection); messages go to
    /// `inbox` as `behaviour` says. Returns once the daemon confirmed.
    pub async fn start(
        client: Client,
        behaviour: Behaviour,
        inbox: Arc<Inbox>,
    ) -> Result<Self, ClientError> {
        let client = Arc::new(client);
        // Subscribed and acknowledged on one stream: the acknowledgements
        // leave on the connection the messages came on, over QUIC or TCP.
        let (acks, mut messages) = client.subscription(4096).await?;
        let behaviour = Arc::new(Mutex::new(behaviour));
        let handed = Arc::new(AtomicU64::new(0));
        // Taking messages from the start: they may come before the
        // confirmation, more than the notice queue holds.
        let task = {
            let behaviour = Arc::clone(&behaviour);
            let handed = Arc::clone(&handed);
            let acks = acks.clone();
            tokio::spawn(async move {
                while let Some(message) = messages.recv().await {
                    handle(message, &behaviour, &handed, &inbox, &acks);
                }
            })
        };
        match acks.call(Operation::CarrierSubscribe).await {
            Ok(Reply::Subscribed) => {}
            other => {
                task.abort();
                return Err(ClientError::Broken(format!("subscribe: {other:?}")));
            }
        }
        Ok(Self {
            client,
            behaviour,
            handed,
            task,
        })
    }

    /// Messages the daemon handed to this bridge so far.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// Disconnects (the daemon fails its messages over to other bridges).
    pub fn stop(self) {
        self.task.abort();
        self.client.close();
    }
}

fn handle(
    response: Response,
    behaviour: &Mutex<Behaviour>,
    handed: &AtomicU64,
    inbox: &Inbox,
    acks: &Pipeline,
) {
    let Reply::Message {
        message,
        to,
        channel,
        text,
    } = response.reply
    else {
        return;
    };
    handed.fetch_add(1, Ordering::Relaxed);
    let behaviour = behaviour
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let report = match behaviour {
        Behaviour::Silent => return,
        Behaviour::Fail(reason) => DeliveryReport::Failed { reason },
        Behaviour::Deliver => {
            inbox.deliver(
                &to,
                Received {
                    message,
                    channel,
                    text: text.as_str().to_owned(),
                },
            );
            DeliveryReport::Delivered
        }
    };
    let acks = acks.clone();
    tokio::spawn(async move {
        let _ = acks.call(Operation::Ack { message, report }).await;
    });
}
