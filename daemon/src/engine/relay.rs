//! The carrier channel: connected delivery bridges and the outbox of
//! messages they have not acknowledged yet.
//!
//! A message goes to the connected bridge with the fewest messages in
//! flight; one that is not acknowledged within `carrier.ack-timeout`, or
//! that the bridge reports failed, goes to a bridge that has not had it
//! yet (provider failover), up to `carrier.max-attempts` bridges. The
//! outbox is bounded (`carrier.outbox`) and holds each message's text only
//! until it is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rand::CryptoRng;
use zeroize::Zeroizing;

use super::{Sink, StreamId};
use crate::clock::Timestamp;
use crate::config::CarrierConfig;
use crate::identity::{CodeId, MessageId};
use crate::phone::{Channel, PhoneNumber};
use crate::wire::codec::{Put, Reader};
use crate::wire::request::Answer;
use crate::wire::{DeliveryReport, DeliveryState, Reply, Response};

/// Why a message could not be handed to any bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DispatchError {
    /// No bridge is connected, or none took the message.
    NoBridge,
    /// The outbox is full.
    Full,
}

/// What a bridge's acknowledgement (or its silence) did to the delivery of
/// one message of a code.
pub(super) type StatusChange = (CodeId, MessageId, DeliveryState);

/// One message to send.
pub(super) struct Outbound {
    pub code: CodeId,
    pub to: PhoneNumber,
    pub channel: Channel,
    pub text: Zeroizing<String>,
}

impl Outbound {
    /// The message as queued on a shared store for a node with a bridge
    /// (the store seals it), with its id and when it is of no more use.
    pub(super) fn encode(&self, id: MessageId, until: Timestamp) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(160));
        out.put_u64(id.0);
        out.put_u64(self.code.0);
        out.put_u64(until.0);
        out.put_bytes(self.to.to_string().as_bytes());
        out.put_u8(self.channel.code());
        out.put_bytes(self.text.as_bytes());
        out
    }

    /// A queued message; `None` if it does not parse.
    pub(super) fn decode(bytes: &[u8]) -> Option<(MessageId, Timestamp, Self)> {
        let mut r = Reader::new(bytes);
        let id = MessageId(r.u64("message").ok()?);
        let code = CodeId(r.u64("code").ok()?);
        let until = Timestamp(r.u64("until").ok()?);
        let to = PhoneNumber::parse(r.str("to").ok()?).ok()?;
        let channel = Channel::from_code(r.u8("channel").ok()?)?;
        let text = Zeroizing::new(r.str("text").ok()?.to_owned());
        r.finish().ok()?;
        Some((
            id,
            until,
            Self {
                code,
                to,
                channel,
                text,
            },
        ))
    }
}

struct Bridge {
    stream: StreamId,
    connection: u64,
    /// The subscription's request id: every message frame carries it.
    request: u64,
    sink: Arc<dyn Sink>,
    in_flight: usize,
}

struct InFlight {
    message: Outbound,
    bridge: StreamId,
    deadline: Timestamp,
    tried: Vec<StreamId>,
}

struct State {
    bridges: Vec<Bridge>,
    messages: HashMap<MessageId, InFlight>,
    /// Replaced by a reload (`Outbox::reconfigure`).
    config: CarrierConfig,
}

/// Bridges and the outbox, behind one lock (a few hundred sends a second
/// per node is the scale of SMS; the lock is held for microseconds).
pub(super) struct Outbox {
    state: Mutex<State>,
}

impl Outbox {
    pub(super) fn new(config: CarrierConfig) -> Self {
        Self {
            state: Mutex::new(State {
                bridges: Vec::new(),
                messages: HashMap::new(),
                config,
            }),
        }
    }

    /// The carrier settings from now on; messages in flight keep the
    /// deadline they were sent with.
    pub(super) fn reconfigure(&self, config: CarrierConfig) {
        self.lock().config = config;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn subscribe(
        &self,
        stream: StreamId,
        connection: u64,
        request: u64,
        sink: Arc<dyn Sink>,
    ) {
        let mut state = self.lock();
        state.bridges.retain(|b| b.stream != stream);
        state.bridges.push(Bridge {
            stream,
            connection,
            request,
            sink,
            in_flight: 0,
        });
    }

    pub(super) fn bridges(&self) -> usize {
        self.lock().bridges.len()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.lock().messages.len()
    }

    /// Hands a message to a bridge.
    pub(super) fn dispatch<R: CryptoRng + ?Sized>(
        &self,
        message: Outbound,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<MessageId, DispatchError> {
        let mut id = MessageId(rng.next_u64());
        while self.lock().messages.contains_key(&id) {
            id = MessageId(rng.next_u64());
        }
        self.dispatch_as(id, message, now).map(|()| id)
    }

    /// Hands a message whose id was drawn elsewhere (another node queued
    /// it) to a bridge.
    pub(super) fn dispatch_as(
        &self,
        id: MessageId,
        message: Outbound,
        now: Timestamp,
    ) -> Result<(), DispatchError> {
        let mut state = self.lock();
        if state.bridges.is_empty() {
            return Err(DispatchError::NoBridge);
        }
        if state.messages.len() >= state.config.outbox {
            return Err(DispatchError::Full);
        }
        if state.messages.contains_key(&id) {
            return Ok(());
        }
        let sent = self.send(&mut state, id, message, Vec::new(), now);
        sent.map_err(|_| DispatchError::NoBridge)
    }

    /// Hands the message to the least loaded live bridge not in `tried`,
    /// and records it in flight; gives the message back if there is none.
    fn send(
        &self,
        state: &mut State,
        id: MessageId,
        message: Outbound,
        mut tried: Vec<StreamId>,
        now: Timestamp,
    ) -> Result<(), Outbound> {
        if tried.len() >= usize::from(state.config.max_attempts) {
            return Err(message);
        }
        let mut candidates: Vec<usize> = (0..state.bridges.len())
            .filter(|&i| {
                state
                    .bridges
                    .get(i)
                    .is_some_and(|b| !tried.contains(&b.stream))
            })
            .collect();
        candidates.sort_by_key(|&i| state.bridges.get(i).map_or(usize::MAX, |b| b.in_flight));
        for i in candidates {
            let Some(bridge) = state.bridges.get_mut(i) else {
                continue;
            };
            let frame = Response {
                id: bridge.request,
                reply: Reply::Message {
                    message: id,
                    to: message.to.clone(),
                    channel: message.channel,
                    text: Answer::new(&message.text),
                },
            }
            .to_frame();
            if bridge.sink.deliver(frame) {
                bridge.in_flight += 1;
                tried.push(bridge.stream);
                let bridge = bridge.stream;
                state.messages.insert(
                    id,
                    InFlight {
                        message,
                        bridge,
                        deadline: now.plus(state.config.ack_timeout),
                        tried,
                    },
                );
                return Ok(());
            }
        }
        Err(message)
    }

    /// A bridge's report on a message. `None`: no such message in flight
    /// on a bridge of this connection.
    pub(super) fn ack(
        &self,
        connection: u64,
        id: MessageId,
        report: DeliveryReport,
        now: Timestamp,
    ) -> Option<StatusChange> {
        let mut state = self.lock();
        let flight = state.messages.get(&id)?;
        let owner = state.bridges.iter().find(|b| b.stream == flight.bridge);
        if owner.is_none_or(|b| b.connection != connection) {
            return None;
        }
        let flight = state.messages.remove(&id)?;
        release(&mut state, flight.bridge);
        Some(match report {
            DeliveryReport::Delivered => {
                metrics::counter!(crate::metrics::SMS_DELIVERIES, "result" => "delivered")
                    .increment(1);
                (flight.message.code, id, DeliveryState::Delivered)
            }
            DeliveryReport::Failed { reason } => {
                self.fail_over(&mut state, id, flight, (reason, "reported"), now)
            }
        })
    }

    /// Fails over the messages whose bridge has not answered in time.
    pub(super) fn sweep(&self, now: Timestamp) -> Vec<StatusChange> {
        let mut state = self.lock();
        let overdue: Vec<MessageId> = state
            .messages
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let why = ("no acknowledgement in time", "timeout");
        self.retry(&mut state, overdue, why, now)
    }

    /// A bridge's stream ended: its messages go to the other bridges now.
    pub(super) fn stream_closed(&self, stream: StreamId, now: Timestamp) -> Vec<StatusChange> {
        let mut state = self.lock();
        let before = state.bridges.len();
        state.bridges.retain(|b| b.stream != stream);
        if state.bridges.len() == before {
            return Vec::new();
        }
        let orphaned: Vec<MessageId> = state
            .messages
            .iter()
            .filter(|(_, f)| f.bridge == stream)
            .map(|(id, _)| *id)
            .collect();
        let why = ("the bridge disconnected", "disconnected");
        self.retry(&mut state, orphaned, why, now)
    }

    fn retry(
        &self,
        state: &mut State,
        ids: Vec<MessageId>,
        (reason, cause): (&str, &'static str),
        now: Timestamp,
    ) -> Vec<StatusChange> {
        ids.into_iter()
            .filter_map(|id| {
                let flight = state.messages.remove(&id)?;
                release(state, flight.bridge);
                Some(self.fail_over(state, id, flight, (reason.to_owned(), cause), now))
            })
            .collect()
    }

    fn fail_over(
        &self,
        state: &mut State,
        id: MessageId,
        flight: InFlight,
        (reason, cause): (String, &'static str),
        now: Timestamp,
    ) -> StatusChange {
        let code = flight.message.code;
        match self.send(state, id, flight.message, flight.tried, now) {
            Ok(()) => {
                metrics::counter!(crate::metrics::SMS_FAILOVERS, "cause" => cause).increment(1);
                (code, id, DeliveryState::Pending)
            }
            Err(_) => {
                metrics::counter!(crate::metrics::SMS_DELIVERIES, "result" => "failed")
                    .increment(1);
                (code, id, DeliveryState::Failed { reason })
            }
        }
    }
}

fn release(state: &mut State, stream: StreamId) {
    if let Some(bridge) = state.bridges.iter_mut().find(|b| b.stream == stream) {
        bridge.in_flight = bridge.in_flight.saturating_sub(1);
    }
}
