// The lifecycle suite, included by `lifecycle.rs` (the embedded store)
// and `lifecycle_cluster.rs` (a node on a Redis Cluster), which set
// `ON_CLUSTER`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sls_sim::carrier::{self, Bridge, Inbox};
use sls_sim::client::Client;
use sls_sim::device::EmulatedDevice;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::Role;
use slsd::identity::{ActivationId, ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::{PushSigner, reactivate_message};
use slsd::phone::PhoneNumber;
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{
    ActivationRoute, ChallengeText, DeviceStatus, EnrollRequest, ErrorCode, Identification,
    Operation, Refusal, Reply, Verdict,
};
use support::daemon::Daemon;

const CONFIG: &str = "[challenges]\nper-user-per-minute = 1000\n\
[sms]\nsends-per-number-per-hour = 100\n";
const DSC_PIN: &str = "4821";

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn number(text: &str) -> PhoneNumber {
    PhoneNumber::parse(text).unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// A daemon with admin, gateway and phone connections, a carrier bridge
/// delivering to `inbox`, and the devices enrolled so far (to answer).
struct World {
    daemon: Daemon,
    // Dropped after the daemon: its Redis Cluster (on the cluster store),
    // then the directory, then the next test's turn.
    _cluster: Option<sls_sim::cluster::Cluster>,
    _dir: tempfile::TempDir,
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
    admin: Client,
    gateway: Client,
    phone: Client,
    inbox: Arc<Inbox>,
    _bridge: Bridge,
    devices: Vec<(DeviceId, EmulatedDevice)>,
}

impl World {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// With more configuration tables; on the store this suite runs on
    /// (`ON_CLUSTER`: one node on a real Redis Cluster, the tests taking
    /// turns).
    async fn start_with(sections: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cluster, turn, sections) = if ON_CLUSTER {
            let turn = support::deployment::TURN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let cluster = sls_sim::cluster::Cluster::start(3, 1)
                .expect("a Redis Cluster (apt-get install redis-server)");
            let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
            let store = format!(
                "backend = \"redis\"\nredis-urls = [{}]\nredis-wait-replicas = 1\n\
                 redis-wait-timeout = \"2s\"\n",
                urls.join(", ")
            );
            // Into the test's own `[store]` table if it has one.
            let sections = match sections.split_once("[store]\n") {
                Some((before, after)) => format!("{before}[store]\n{store}{after}"),
                None => format!("{sections}[store]\n{store}"),
            };
            (Some(cluster), Some(turn), sections)
        } else {
            (None, None, sections.to_owned())
        };
        let daemon = Daemon::start(&dir.path().join("data"), "", &format!("{CONFIG}{sections}"));
        Self::connect(dir, daemon, cluster, turn).await
    }

    async fn connect(
        dir: tempfile::TempDir,
        daemon: Daemon,
        cluster: Option<sls_sim::cluster::Cluster>,
        turn: Option<std::sync::MutexGuard<'static, ()>>,
    ) -> Self {
        let inbox = Arc::new(Inbox::default());
        let bridge = Bridge::start(
            daemon.client(Role::Carrier).await,
            carrier::Behaviour::Deliver,
            Arc::clone(&inbox),
        )
        .await
        .unwrap();
        Self {
            admin: daemon.client(Role::Admin).await,
            gateway: daemon.client(Role::Gateway).await,
            phone: daemon.client(Role::Phone).await,
            daemon,
            _cluster: cluster,
            _dir: dir,
            _turn: turn,
            inbox,
            _bridge: bridge,
            devices: Vec::new(),
        }
    }

    /// Stops the daemon cleanly and starts it again on the same data.
    async fn restart(self) -> Self {
        let Self {
            _dir: dir,
            daemon,
            devices,
            _cluster: cluster,
            _turn: turn,
            ..
        } = self;
        let mut world = Self::connect(dir, daemon.restart(), cluster, turn).await;
        world.devices = devices;
        world
    }

    async fn admin(&self, operation: Operation) -> Reply {
        self.admin.call(operation).await.unwrap()
    }

    async fn gateway(&self, operation: Operation) -> Reply {
        self.gateway.call(operation).await.unwrap()
    }

    fn remember(&mut self, device: DeviceId, kind: DeviceKind, secret: &SecretKey) {
        let profiles = Config::default().devices;
        let pin = matches!(kind, DeviceKind::DscPlus).then_some(DSC_PIN);
        let emulated = EmulatedDevice::new(kind, secret, pin, &profiles).unwrap();
        self.devices.push((device, emulated));
    }

    async fn enroll(&mut self, name: &str, kind: DeviceKind) -> DeviceId {
        let request = EnrollRequest {
            user: user(name),
            kind,
            secret: None,
            pin: matches!(kind, DeviceKind::DscPlus).then(|| Pin::new(DSC_PIN)),
            label: kind.to_string(),
        };
        let Reply::Enrolled {
            device,
            secret: Some(secret),
        } = self.admin(Operation::Enroll(request)).await
        else {
            panic!("enrol {kind}");
        };
        self.remember(device, kind, &secret);
        device
    }

    async fn enroll_phone(&self, name: &str, to: &str) -> DeviceId {
        let operation = Operation::EnrollPhone {
            user: user(name),
            number: number(to),
            label: "mobile".into(),
        };
        match self.admin(operation).await {
            Reply::Enrolled { device, .. } => device,
            other => panic!("enrol phone: {other:?}"),
        }
    }

    async fn set_identity(&self, name: &str, residence: &str, document: &str) {
        let operation = Operation::SetIdentity {
            user: user(name),
            identity: Identification {
                residence: residence.into(),
                date_of_birth: "1980-04-02".into(),
                citizenship: "CH".into(),
                id_document: document.into(),
            },
        };
        assert_eq!(self.admin(operation).await, Reply::Done);
    }

    async fn challenge(&self, name: &str, device: DeviceId) -> Reply {
        self.gateway(Operation::Challenge {
            user: user(name),
            device,
        })
        .await
    }

    /// The right answer of an enrolled device to `text`.
    fn answer(&self, device: DeviceId, text: &ChallengeText) -> Answer {
        let (_, emulated) = self
            .devices
            .iter()
            .find(|(id, _)| *id == device)
            .expect("a device of this world");
        Answer::new(emulated.answer(text, now_ms() / 1000).unwrap().as_str())
    }

    /// Opens a challenge and answers it rightly.
    async fn login(&self, name: &str, device: DeviceId) -> (ChallengeId, Answer) {
        match self.challenge(name, device).await {
            Reply::Challenge {
                challenge, text, ..
            } => (challenge, self.answer(device, &text)),
            other => panic!("challenge {device} of {name}: {other:?}"),
        }
    }

    async fn verify(&self, challenge: ChallengeId, response: Answer) -> Verdict {
        match self
            .gateway(Operation::Verify {
                challenge,
                response,
            })
            .await
        {
            Reply::Verdict(verdict) => verdict,
            other => panic!("verify: {other:?}"),
        }
    }

    async fn logs_in(&self, name: &str, device: DeviceId) -> bool {
        let (challenge, response) = self.login(name, device).await;
        matches!(
            self.verify(challenge, response).await,
            Verdict::Accepted { device: d, .. } if d == device
        )
    }

    /// `(required, [(device, status)])` of the gateway's list (what the
    /// user may log in with).
    async fn devices(&self, name: &str) -> (bool, Vec<(DeviceId, DeviceStatus)>) {
        Self::entries(self.gateway(Operation::Devices { user: user(name) }).await)
    }

    /// Every device of the user, with its state (the operator's list).
    async fn all_devices(&self, name: &str) -> Vec<(DeviceId, DeviceStatus)> {
        Self::entries(
            self.admin(Operation::ListDevices {
                user: user(name),
                page: Page::first(500),
            })
            .await,
        )
        .1
    }

    fn entries(reply: Reply) -> (bool, Vec<(DeviceId, DeviceStatus)>) {
        match reply {
            Reply::Devices { required, devices } => (
                required,
                devices.iter().map(|d| (d.device, d.status)).collect(),
            ),
            other => panic!("devices: {other:?}"),
        }
    }

    /// The code in the next message to `to`.
    async fn code_sent_to(&self, to: &str) -> String {
        self.inbox
            .next(&number(to), Duration::from_secs(5))
            .await
            .expect("a message")
            .code()
            .expect("a code in it")
    }

    async fn start_activation(&self, name: &str) -> (ActivationId, ActivationRoute) {
        match self
            .gateway(Operation::StartActivation { user: user(name) })
            .await
        {
            Reply::ActivationStarted {
                activation, route, ..
            } => (activation, route),
            other => panic!("start activation of {name}: {other:?}"),
        }
    }

    async fn complete(
        &self,
        activation: ActivationId,
        token: &str,
        signer: &PushSigner,
        pin: &str,
        previous: Option<(DeviceId, &PushSigner)>,
    ) -> Reply {
        let operation = Operation::CompleteActivation {
            activation,
            token: Answer::new(token),
            key: signer.public(),
            pin: Pin::new(pin),
            previous: previous
                .map(|(old, key)| (old, key.sign(&reactivate_message(activation, old)))),
            sms_token: None,
        };
        self.phone.call(operation).await.unwrap()
    }

    /// Completes an activation proven by a code card's answer and the SMS
    /// token sent beside it.
    async fn complete_with_sms(
        &self,
        activation: ActivationId,
        answer: &str,
        sms_token: Option<&str>,
        signer: &PushSigner,
    ) -> Reply {
        let operation = Operation::CompleteActivation {
            activation,
            token: Answer::new(answer),
            key: signer.public(),
            pin: Pin::new("7g3k"),
            previous: None,
            sms_token: sms_token.map(Answer::new),
        };
        self.phone.call(operation).await.unwrap()
    }

    /// Activates an IB Key for `name` by SMS token to `to`; the new device.
    async fn activate(&mut self, name: &str, to: &str, signer: &PushSigner) -> Reply {
        let (activation, route) = self.start_activation(name).await;
        assert_eq!(route, ActivationRoute::Sms);
        let token = self.code_sent_to(to).await;
        let reply = self
            .complete(activation, &token, signer, "7g3k", None)
            .await;
        if let Reply::Activated { device, secret, .. } = &reply {
            self.remember(*device, DeviceKind::IbKey, secret);
        }
        reply
    }

    async fn audit_actions(&self) -> Vec<(String, String)> {
        match self
            .admin(Operation::AuditLog {
                after: 0,
                limit: 500,
            })
            .await
        {
            Reply::Audit(entries) => entries.into_iter().map(|e| (e.action, e.detail)).collect(),
            other => panic!("audit: {other:?}"),
        }
    }

    async fn withdraw(&self, name: &str, device: DeviceId, cents: u64) -> Reply {
        let (challenge, response) = self.login(name, device).await;
        self.gateway(Operation::AuthorizeWithdrawal {
            user: user(name),
            amount_cents: cents,
            challenge,
            response,
        })
        .await
    }
}

#[tokio::test]
async fn a_number_is_confirmed_by_sms_and_enrols_sms_for_a_user_without_devices() {
    let mut w = World::start().await;
    let start = |name: &str, to: &str| Operation::StartPhoneVerification {
        user: user(name),
        number: number(to),
    };
    let confirm = |name: &str, code: &str| Operation::ConfirmPhone {
        user: user(name),
        code: Answer::new(code),
    };

    // Carol has no device: the confirmed number becomes her SMS device.
    let Reply::VerificationSent { expires_in } = w.admin(start("carol", "+41 791110001")).await
    else {
        panic!()
    };
    assert_eq!(expires_in, Duration::from_secs(600));
    let code = w.code_sent_to("+41 791110001").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert_eq!(
        w.admin(confirm("carol", wrong)).await,
        Reply::Verdict(Verdict::Rejected { attempts_left: 2 })
    );
    let Reply::PhoneConfirmed {
        sms_device: Some(sms),
    } = w.admin(confirm("carol", &code)).await
    else {
        panic!("not confirmed")
    };
    assert_eq!(
        w.devices("carol").await.1,
        vec![(sms, DeviceStatus::Active)]
    );
    // Single use.
    assert_eq!(
        error_code(&w.admin(confirm("carol", &code)).await),
        Some(ErrorCode::NotFound)
    );

    // Dave holds a card: the number goes on record, no SMS device.
    let card = w.enroll("dave", DeviceKind::Scc).await;
    w.admin(start("dave", "+41 791110002")).await;
    let code = w.code_sent_to("+41 791110002").await;
    assert_eq!(
        w.admin(confirm("dave", &code)).await,
        Reply::PhoneConfirmed { sms_device: None }
    );
    assert_eq!(
        w.devices("dave").await.1,
        vec![(card, DeviceStatus::Active)]
    );

    // Three wrong codes use the code up: the right one no longer works.
    w.admin(start("erin", "+41 791110003")).await;
    let code = w.code_sent_to("+41 791110003").await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    for left in [2, 1, 0] {
        assert_eq!(
            w.admin(confirm("erin", wrong)).await,
            Reply::Verdict(Verdict::Rejected {
                attempts_left: left
            })
        );
    }
    assert_eq!(
        error_code(&w.admin(confirm("erin", &code)).await),
        Some(ErrorCode::NotFound)
    );
    let actions = w.audit_actions().await;
    assert_eq!(
        actions.iter().filter(|(a, _)| a == "confirm-phone").count(),
        2
    );
    assert!(
        actions.iter().all(|(_, detail)| !detail.contains("79111")),
        "numbers stay out of the audit log"
    );
}

/// A six-digit token that is not `token`.
fn wrong_token(token: &str) -> &'static str {
    if token == "000000" {
        "000001"
    } else {
        "000000"
    }
}

#[tokio::test]
async fn an_activation_id_alone_does_not_reveal_the_number_on_record() {
    let w = World::start().await;
    w.enroll_phone("alice", "+41 791234567").await;
    let (activation, _) = w.start_activation("alice").await;
    let token = w.code_sent_to("+41 791234567").await;
    let wrong = wrong_token(&token);
    let key = PushSigner::from_seed([1; 32]);
    // A phone certificate and the activation id, but not the token: every
    // PIN made of the number's digits is answered the same way, and the
    // third wrong token ends the activation.
    let mut replies = Vec::new();
    for pin in ["1234", "9123", "4567", "7912", "2345"] {
        replies.push(w.complete(activation, wrong, &key, pin, None).await);
    }
    assert!(
        !replies.iter().any(|r| matches!(r, Reply::Refused { .. })),
        "no PIN rule was judged without the token: {replies:?}"
    );
    assert_eq!(
        replies[..3],
        [
            Reply::Verdict(Verdict::Rejected { attempts_left: 2 }),
            Reply::Verdict(Verdict::Rejected { attempts_left: 1 }),
            Reply::Verdict(Verdict::Rejected { attempts_left: 0 }),
        ]
    );
    assert_eq!(error_code(&replies[3]), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn ib_key_activation_by_sms_token_with_pin_rules_add_user_and_one_phone_per_user() {
    let mut w = World::start().await;
    w.enroll_phone("alice", "+41 791234567").await;
    w.enroll_phone("bob", "+41 797654321").await;
    let first = PushSigner::from_seed([1; 32]);

    // No number and no physical device: no route, temporary access instead.
    let reply = w
        .gateway(Operation::StartActivation {
            user: user("nobody"),
        })
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::NoVerifiedNumber));

    let (activation, route) = w.start_activation("alice").await;
    assert_eq!(route, ActivationRoute::Sms);
    let token = w.code_sent_to("+41 791234567").await;
    let wrong = wrong_token(&token);
    // The token is checked first: with a wrong one, even the user's own
    // phone digits as the PIN get only Rejected (the PIN rules, which look
    // at the number on record, are judged for token holders alone).
    assert_eq!(
        w.complete(activation, wrong, &first, "9123", None).await,
        Reply::Verdict(Verdict::Rejected { attempts_left: 2 })
    );
    // With the right token a weak PIN is refused, naming its rule, and
    // spends an attempt (so a token holder has few guesses at the number).
    let reply = w.complete(activation, &token, &first, "9123", None).await;
    let Reply::Refused {
        reason: Refusal::WeakPin,
        message,
    } = &reply
    else {
        panic!("{reply:?}")
    };
    assert!(message.contains("phone"), "{message}");
    let Reply::Activated {
        user: bound,
        device: phone1,
        secret,
        replaced: None,
    } = w.complete(activation, &token, &first, "7g3k", None).await
    else {
        panic!("not activated")
    };
    assert_eq!(bound, user("alice"));
    w.remember(phone1, DeviceKind::IbKey, &secret);
    // The token is single-use.
    assert_eq!(
        error_code(&w.complete(activation, &token, &first, "7g3k", None).await),
        Some(ErrorCode::NotFound)
    );
    // Offline challenge/response and push work with the new binding.
    assert!(w.logs_in("alice", phone1).await);
    let push = Operation::Push {
        user: user("alice"),
        device: phone1,
    };
    assert!(error_code(&w.gateway(push).await) != Some(ErrorCode::NotFound));

    // Add user: the same app (same key) binds Bob with his own token.
    let Reply::Activated {
        device: bob_phone, ..
    } = w.activate("bob", "+41 797654321", &first).await
    else {
        panic!("bob not activated")
    };
    assert!(w.logs_in("bob", bob_phone).await);

    // A new phone for Alice: the old binding stops at once, Bob's stays.
    let second = PushSigner::from_seed([2; 32]);
    let Reply::Activated {
        device: phone2,
        replaced,
        ..
    } = w.activate("alice", "+41 791234567", &second).await
    else {
        panic!("migration refused")
    };
    assert_eq!(replaced, Some(phone1));
    assert_eq!(
        error_code(&w.challenge("alice", phone1).await),
        Some(ErrorCode::NotFound)
    );
    let push = Operation::Push {
        user: user("alice"),
        device: phone1,
    };
    assert_eq!(
        error_code(&w.gateway(push).await),
        Some(ErrorCode::NotFound)
    );
    assert!(w.logs_in("alice", phone2).await);
    assert!(w.logs_in("bob", bob_phone).await);

    // Reactivation of the same phone: the old binding's signature proves
    // it; a signature by another key is refused before the token is spent.
    let (activation, _) = w.start_activation("alice").await;
    let token = w.code_sent_to("+41 791234567").await;
    let reply = w
        .complete(activation, &token, &second, "7g3k", Some((phone2, &first)))
        .await;
    assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden), "{reply:?}");
    let Reply::Activated {
        device: phone3,
        replaced,
        ..
    } = w
        .complete(activation, &token, &second, "7g3k", Some((phone2, &second)))
        .await
    else {
        panic!("reactivation refused")
    };
    assert_eq!(replaced, Some(phone2));
    let ib_keys: Vec<_> = w.devices("alice").await.1;
    assert!(ib_keys.iter().any(|(d, _)| *d == phone3));
    assert!(!ib_keys.iter().any(|(d, _)| *d == phone2 || *d == phone1));

    // Three wrong tokens use the activation up.
    let (activation, _) = w.start_activation("alice").await;
    let token = w.code_sent_to("+41 791234567").await;
    let wrong = wrong_token(&token);
    for _ in 0..3 {
        w.complete(activation, wrong, &second, "7g3k", None).await;
    }
    assert_eq!(
        error_code(&w.complete(activation, &token, &second, "7g3k", None).await),
        Some(ErrorCode::NotFound)
    );

    let actions = w.audit_actions().await;
    let activations: Vec<_> = actions
        .iter()
        .filter(|(a, _)| a == "activate-ib-key")
        .collect();
    assert_eq!(activations.len(), 4);
    assert!(activations[3].1.contains("same phone"), "{activations:?}");
    assert_eq!(
        actions
            .iter()
            .filter(|(a, _)| a == "deactivate-ib-key")
            .count(),
        2
    );
}

#[tokio::test]
async fn a_physical_device_answers_instead_of_an_sms_token() {
    let mut w = World::start().await;
    let dsc = w.enroll("frank", DeviceKind::DscPlus).await;
    let (activation, route) = w.start_activation("frank").await;
    let ActivationRoute::Device { device, text } = route else {
        panic!("{route:?}")
    };
    assert_eq!(device, dsc);
    let signer = PushSigner::from_seed([3; 32]);
    let answer = w.answer(dsc, &text);
    // A wrong answer counts against the card, as at login.
    let reply = w
        .complete(activation, "00000000", &signer, "7g3k", None)
        .await;
    assert!(
        matches!(reply, Reply::Verdict(Verdict::Rejected { .. })),
        "{reply:?}"
    );
    let Reply::Activated {
        device: app,
        replaced: None,
        ..
    } = w
        .complete(activation, answer.as_str(), &signer, "7g3k", None)
        .await
    else {
        panic!("not activated")
    };
    // Several devices (M2FS): the card stays active beside the app.
    let (required, devices) = w.devices("frank").await;
    assert!(required);
    assert_eq!(
        devices,
        vec![(dsc, DeviceStatus::Active), (app, DeviceStatus::Active)]
    );
    assert!(w.logs_in("frank", dsc).await);
}

/// One observed code-card login must not bind an IB Key (a higher level,
/// which would revoke the owner's app): a card proves an activation only
/// with the SMS token sent beside its challenge.
#[tokio::test]
async fn a_code_card_activates_an_app_only_with_the_sms_token_as_well() {
    let mut w = World::start().await;
    let card = w.enroll("fay", DeviceKind::Scc).await;
    // No number on record: the card alone is not enough.
    let reply = w
        .gateway(Operation::StartActivation { user: user("fay") })
        .await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::NoVerifiedNumber),
        "{reply:?}"
    );
    w.admin(Operation::StartPhoneVerification {
        user: user("fay"),
        number: number("+41 791110077"),
    })
    .await;
    let code = w.code_sent_to("+41 791110077").await;
    w.admin(Operation::ConfirmPhone {
        user: user("fay"),
        code: Answer::new(&code),
    })
    .await;

    let (activation, route) = w.start_activation("fay").await;
    let ActivationRoute::DeviceAndSms { device, text } = route else {
        panic!("{route:?}")
    };
    assert_eq!(device, card);
    let token = w.code_sent_to("+41 791110077").await;
    let observed = w.answer(card, &text);
    let signer = PushSigner::from_seed([4; 32]);
    // The card's answer without the token, or with a wrong one, binds
    // nothing; each spends one of the token's attempts.
    for (sms, left) in [(None, 2), (Some(wrong_token(&token)), 1)] {
        assert_eq!(
            w.complete_with_sms(activation, observed.as_str(), sms, &signer)
                .await,
            Reply::Verdict(Verdict::Rejected {
                attempts_left: left
            })
        );
    }
    let reply = w
        .complete_with_sms(activation, observed.as_str(), Some(&token), &signer)
        .await;
    assert!(matches!(reply, Reply::Activated { .. }), "{reply:?}");
}

#[tokio::test]
async fn several_devices_of_different_kinds_each_log_in() {
    let mut w = World::start().await;
    let dsc = w.enroll("gina", DeviceKind::DscPlus).await;
    let scc = w.enroll("gina", DeviceKind::Scc).await;
    let ib = w.enroll("gina", DeviceKind::IbKey).await;
    let (_, devices) = w.devices("gina").await;
    assert_eq!(
        devices,
        vec![
            (dsc, DeviceStatus::Active),
            (scc, DeviceStatus::Active),
            (ib, DeviceStatus::Active)
        ]
    );
    for device in [dsc, scc, ib] {
        assert!(w.logs_in("gina", device).await, "{device}");
    }
}

/// Asks for `requester` to share the owner's `device`, proven by a login.
async fn share(w: &World, requester: &str, device: DeviceId) -> Reply {
    let (challenge, response) = w.login("owner", device).await;
    w.admin(Operation::ShareDevice {
        requesting_user: user(requester),
        owner_user: user("owner"),
        device,
        challenge,
        response,
    })
    .await
}

#[tokio::test]
async fn sharing_a_physical_device_follows_the_rules() {
    let mut w = World::start().await;
    let owner_dsc = w.enroll("owner", DeviceKind::DscPlus).await;
    let owner_ib = w.enroll("owner", DeviceKind::IbKey).await;
    let own_card = w.enroll("spouse", DeviceKind::Scc).await;
    let stranger_dsc = w.enroll("stranger", DeviceKind::DscPlus).await;
    w.set_identity("owner", "CH", "P 123").await;
    w.set_identity("spouse", "CH", "P 123").await;
    w.set_identity("stranger", "CH", "P 999").await;
    let refusal = |reply: Reply| match reply {
        Reply::Refused { reason, message } => (reason, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refusal(share(&w, "stranger", owner_dsc).await),
        (
            Refusal::DifferentIdentification,
            "Different identification information".into()
        )
    );
    assert_eq!(
        refusal(share(&w, "spouse", owner_ib).await).0,
        Refusal::NotShareable
    );
    let _ = stranger_dsc;

    // Same identification, the most secure device: pending, then approved.
    let Reply::Share {
        share: id,
        active: false,
    } = share(&w, "spouse", owner_dsc).await
    else {
        panic!("not pending")
    };
    assert!(
        w.logs_in("spouse", own_card).await,
        "pending changes nothing"
    );
    let decide = Operation::DecideShare {
        share: id,
        approve: true,
    };
    assert_eq!(
        w.admin(decide).await,
        Reply::Share {
            share: id,
            active: true
        }
    );
    assert_eq!(
        w.devices("spouse").await.1,
        vec![(owner_dsc, DeviceStatus::Active)]
    );
    // The operator's list is by device id (the owner's DSC+ came first).
    assert_eq!(
        w.all_devices("spouse").await,
        vec![
            (owner_dsc, DeviceStatus::Active),
            (own_card, DeviceStatus::Suspended)
        ]
    );
    assert!(w.logs_in("spouse", owner_dsc).await);
    assert!(!matches!(
        w.challenge("spouse", own_card).await,
        Reply::Challenge { .. }
    ));
    // Cancelling gives the spouse their own card back.
    assert_eq!(
        w.admin(Operation::CancelShare { share: id }).await,
        Reply::Done
    );
    assert!(w.logs_in("spouse", own_card).await);
    // Compliance may reject a request instead: nothing changes.
    let Reply::Share { share: id, .. } = share(&w, "spouse", owner_dsc).await else {
        panic!("not pending")
    };
    let reject = Operation::DecideShare {
        share: id,
        approve: false,
    };
    assert_eq!(
        w.admin(reject).await,
        Reply::Share {
            share: id,
            active: false
        }
    );
    assert_eq!(
        w.admin(Operation::Shares {
            page: Page::first(500),
        })
        .await,
        Reply::Shares(Vec::new())
    );
    assert!(w.logs_in("spouse", own_card).await);

    // A less secure device than the requester's own is refused.
    let spouse_dsc = w.enroll("spouse", DeviceKind::DscPlus).await;
    let owner_card = w.enroll("owner", DeviceKind::Scc).await;
    let _ = spouse_dsc;
    assert_eq!(
        refusal(share(&w, "spouse", owner_card).await),
        (Refusal::LessSecureDevice, "Less secure device".into())
    );
    // A temporary device on either side is refused.
    w.admin(Operation::IssueTemporaryCode {
        user: user("spouse"),
    })
    .await;
    assert_eq!(
        refusal(share(&w, "spouse", owner_dsc).await).0,
        Refusal::TemporaryDevice
    );
}

#[tokio::test]
async fn a_temporary_code_has_fixed_uses_and_can_be_revoked() {
    let w = World::start().await;
    let issue = || Operation::IssueTemporaryCode { user: user("lost") };
    let Reply::TemporaryCode {
        device,
        code,
        expires_in,
        uses,
    } = w.admin(issue()).await
    else {
        panic!()
    };
    assert_eq!(expires_in, Duration::from_secs(2 * 86_400));
    assert_eq!(uses, 5);
    for _ in 0..5 {
        let Reply::Challenge {
            challenge, text, ..
        } = w.challenge("lost", device).await
        else {
            panic!("no challenge")
        };
        assert_eq!(text, ChallengeText::EnterCode);
        assert!(matches!(
            w.verify(challenge, code.clone()).await,
            Verdict::Accepted {
                kind: DeviceKind::Temporary,
                ..
            }
        ));
    }
    assert_eq!(
        error_code(&w.challenge("lost", device).await),
        Some(ErrorCode::NotFound),
        "used up"
    );
    // Revocable before its uses run out.
    let Reply::TemporaryCode { device, .. } = w.admin(issue()).await else {
        panic!()
    };
    assert_eq!(w.admin(Operation::Revoke { device }).await, Reply::Done);
    assert_eq!(
        error_code(&w.challenge("lost", device).await),
        Some(ErrorCode::NotFound)
    );
}

#[tokio::test]
async fn a_shipped_replacement_is_pending_until_used_and_retires_the_lost_card() {
    let mut w = World::start().await;
    let lost = w.enroll("henk", DeviceKind::DscPlus).await;
    let order = Operation::OrderReplacement {
        lost,
        pin: Some(Pin::new(DSC_PIN)),
        label: "replacement".into(),
    };
    let Reply::Enrolled {
        device: new,
        secret: Some(secret),
    } = w.admin(order).await
    else {
        panic!()
    };
    w.remember(new, DeviceKind::DscPlus, &secret);
    assert_eq!(
        w.all_devices("henk").await,
        vec![(lost, DeviceStatus::Active), (new, DeviceStatus::Ordered)]
    );
    let shipped_at = Timestamp(now_ms());
    let ship = Operation::ShipReplacement {
        device: new,
        shipped_at,
    };
    assert_eq!(w.admin(ship).await, Reply::Done);
    let Reply::PendingActivations(pending) = w
        .admin(Operation::PendingActivations {
            page: Page::first(500),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].device, new);
    assert_eq!(pending[0].replaces, lost);
    assert_eq!(
        pending[0].activates_at,
        shipped_at.plus(Duration::from_secs(21 * 86_400))
    );
    // The holder's first right answer activates it and retires the lost card.
    assert!(w.logs_in("henk", new).await);
    assert_eq!(
        w.all_devices("henk").await,
        vec![(new, DeviceStatus::Active)]
    );
    let Reply::PendingActivations(pending) = w
        .admin(Operation::PendingActivations {
            page: Page::first(500),
        })
        .await
    else {
        panic!()
    };
    assert!(pending.is_empty());
}

#[tokio::test]
async fn opting_out_is_refused_in_hong_kong_and_india_and_reversible_elsewhere() {
    let mut w = World::start().await;
    w.enroll("ivan", DeviceKind::Scc).await;
    w.enroll("hk", DeviceKind::Scc).await;
    w.set_identity("ivan", "CH", "P 1").await;
    w.set_identity("hk", "HK", "P 2").await;
    let opt = |name: &str, opted_out| Operation::SetOptOut {
        user: user(name),
        opted_out,
    };
    assert_eq!(w.admin(opt("ivan", true)).await, Reply::Done);
    assert!(!w.devices("ivan").await.0);
    assert_eq!(w.admin(opt("ivan", false)).await, Reply::Done);
    assert!(w.devices("ivan").await.0);
    let Reply::Refused { reason, message } = w.admin(opt("hk", true)).await else {
        panic!()
    };
    assert_eq!(reason, Refusal::OptOutForbidden);
    assert!(message.contains("SFC"), "{message}");
    assert!(w.devices("hk").await.0);
}

#[tokio::test]
async fn withdrawal_limits_by_device_and_16_concurrent_withdrawals_stay_under_the_limit() {
    // Two changes run at once: the others wait their turn, none is refused.
    let mut w = World::start_with("[store]\nchange-workers = 2\n").await;
    // A device has one current challenge: one card per concurrent login.
    let mut cards = Vec::new();
    for _ in 0..16 {
        cards.push(w.enroll("jo", DeviceKind::Scc).await);
    }
    let card = cards[0];
    let dsc = w.enroll("jo", DeviceKind::DscPlus).await;

    // 16 withdrawals of 20,000 USD at once against the cards' 200,000/day.
    let mut logins = Vec::new();
    for card in &cards {
        logins.push(w.login("jo", *card).await);
    }
    let mut tasks = Vec::new();
    for (challenge, response) in logins {
        let operation = Operation::AuthorizeWithdrawal {
            user: user("jo"),
            amount_cents: 2_000_000,
            challenge,
            response,
        };
        let client = w.daemon.client(Role::Gateway).await;
        tasks.push(tokio::spawn(async move {
            client.call(operation).await.unwrap()
        }));
    }
    let mut approved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Reply::WithdrawalApproved { .. } => approved += 1,
            Reply::OverLimit { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(approved, 10);

    // The refusal says what is left and which kinds would allow it.
    let Reply::OverLimit {
        device_kind,
        remaining_today,
        remaining_5d,
        kinds_that_allow,
    } = w.withdraw("jo", card, 100).await
    else {
        panic!()
    };
    assert_eq!(device_kind, DeviceKind::Scc);
    assert_eq!(remaining_today, Some(0));
    assert_eq!(remaining_5d, Some(40_000_000));
    assert!(kinds_that_allow.contains(&DeviceKind::DscPlus));
    assert!(!kinds_that_allow.contains(&DeviceKind::Scc));
    // The DSC+ has no limit.
    assert!(matches!(
        w.withdraw("jo", dsc, 500_000_000).await,
        Reply::WithdrawalApproved {
            kind: DeviceKind::DscPlus,
            remaining_today: None,
            ..
        }
    ));
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_lifecycle_loses_nothing() {
    let mut w = World::start().await;
    let owner_dsc = w.enroll("kim", DeviceKind::DscPlus).await;
    let card = w.enroll("lee", DeviceKind::Scc).await;
    w.set_identity("kim", "CH", "P 7").await;
    w.set_identity("lee", "CH", "P 7").await;
    // A pending share.
    let (challenge, response) = w.login("kim", owner_dsc).await;
    let Reply::Share { share, .. } = w
        .admin(Operation::ShareDevice {
            requesting_user: user("lee"),
            owner_user: user("kim"),
            device: owner_dsc,
            challenge,
            response,
        })
        .await
    else {
        panic!()
    };
    // A replacement shipped.
    let order = Operation::OrderReplacement {
        lost: owner_dsc,
        pin: Some(Pin::new(DSC_PIN)),
        label: String::new(),
    };
    let Reply::Enrolled { device: new, .. } = w.admin(order).await else {
        panic!()
    };
    let shipped_at = Timestamp(now_ms());
    w.admin(Operation::ShipReplacement {
        device: new,
        shipped_at,
    })
    .await;
    // A temporary code, used once.
    let Reply::TemporaryCode {
        device: temp, code, ..
    } = w
        .admin(Operation::IssueTemporaryCode { user: user("mo") })
        .await
    else {
        panic!()
    };
    let Reply::Challenge { challenge, .. } = w.challenge("mo", temp).await else {
        panic!()
    };
    assert!(matches!(
        w.verify(challenge, code.clone()).await,
        Verdict::Accepted { .. }
    ));
    // Amounts in the ledger.
    assert!(matches!(
        w.withdraw("lee", card, 15_000_000).await,
        Reply::WithdrawalApproved { .. }
    ));
    let before = w.audit_actions().await;

    let w = w.restart().await;
    let Reply::Shares(shares) = w
        .admin(Operation::Shares {
            page: Page::first(500),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(shares.len(), 1);
    assert_eq!((shares[0].share, shares[0].active), (share, false));
    let Reply::PendingActivations(pending) = w
        .admin(Operation::PendingActivations {
            page: Page::first(500),
        })
        .await
    else {
        panic!()
    };
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.device, p.shipped_at))
            .collect::<Vec<_>>(),
        vec![(new, shipped_at)]
    );
    // Four uses left of five.
    for _ in 0..4 {
        let Reply::Challenge { challenge, .. } = w.challenge("mo", temp).await else {
            panic!()
        };
        assert!(matches!(
            w.verify(challenge, code.clone()).await,
            Verdict::Accepted { .. }
        ));
    }
    assert_eq!(
        error_code(&w.challenge("mo", temp).await),
        Some(ErrorCode::NotFound)
    );
    // 150,000 of 200,000 already withdrawn today.
    assert!(matches!(
        w.withdraw("lee", card, 5_000_001).await,
        Reply::OverLimit {
            remaining_today: Some(5_000_000),
            ..
        }
    ));
    let after = w.audit_actions().await;
    assert_eq!(after[..before.len()], before[..], "the audit log is kept");
}

#[tokio::test]
async fn registry_changes_waiting_at_once_are_bounded() {
    // One change at a time may wait for its commit: of 32 enrolments sent
    // in one write, those that find it taken are told `Busy` at once.
    // (On a cluster every request waits on the store: its bound is
    // `redis-in-flight`.)
    let bound = if ON_CLUSTER {
        "redis-in-flight"
    } else {
        "changes-in-flight"
    };
    let w = World::start_with(&format!("[store]\n{bound} = 1\n")).await;
    let enrolments = (0..32)
        .map(|i| {
            Operation::Enroll(EnrollRequest {
                user: user(&format!("u{i}")),
                kind: DeviceKind::Scc,
                secret: None,
                pin: None,
                label: String::new(),
            })
        })
        .collect();
    let mut stream = w.admin.stream().await.unwrap();
    let ids = stream.send_batch(enrolments).await.unwrap();
    let (mut enrolled, mut busy) = (0, 0);
    for _ in &ids {
        match stream.receive().await.unwrap().reply {
            Reply::Enrolled { .. } => enrolled += 1,
            reply if error_code(&reply) == Some(ErrorCode::Busy) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(enrolled > 0 && busy > 0, "enrolled {enrolled}, busy {busy}");
    // The refused ones change nothing; the next change and login work.
    let mut w = w;
    let card = w.enroll("late", DeviceKind::Scc).await;
    assert!(w.logs_in("late", card).await);
}

#[tokio::test]
async fn an_online_code_card_is_a_kind_of_its_own_with_the_lowest_limits() {
    let mut w = World::start().await;
    let online = w.enroll("nina", DeviceKind::OnlineScc).await;
    let Reply::Devices { devices, .. } = w.gateway(Operation::Devices { user: user("nina") }).await
    else {
        panic!()
    };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].kind, DeviceKind::OnlineScc);
    // 200,000 USD a day, as a code card: one cent more is over the limit.
    let over = w.withdraw("nina", online, 20_000_001).await;
    assert!(
        matches!(
            over,
            Reply::OverLimit {
                device_kind: DeviceKind::OnlineScc,
                remaining_today: Some(20_000_000),
                remaining_5d: Some(60_000_000),
                ..
            }
        ),
        "{over:?}"
    );
    assert!(matches!(
        w.withdraw("nina", online, 20_000_000).await,
        Reply::WithdrawalApproved {
            remaining_today: Some(0),
            ..
        }
    ));
}
