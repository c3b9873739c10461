//! `slsd admin <operation>`: every admin-role operation from the command
//! line, over QUIC with the admin certificate of the data directory.
//!
//! Each reply becomes one JSON value (`--json` prints it as is); the human
//! output is that same value laid out as `key: value` lines and one line
//! per list entry, so both outputs always say the same thing. An error
//! reply, a rejected code or a refusal is one line on stderr and a
//! non-zero exit.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};
use slsd::client::{Client, Endpoints};
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::Role;
use slsd::identity::Serial;
use slsd::identity::{ChallengeId, DeviceId, ShareId, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::PushKey;
use slsd::phone::PhoneNumber;
use slsd::policy::calendar::Day;
use slsd::profile::DeviceKind;
use slsd::server::pki::{self, PkiPaths};
use slsd::wire::request::{Answer, Page, Pin};
use slsd::wire::token::{TOKEN_STATES, TokenFilter, TokenState};
use slsd::wire::{
    ChallengeText, DeviceStatus, EnrollRequest, Identification, Operation, Reply, Verdict,
};

/// Talk to a running daemon as its operator.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The daemon's data directory: its CA and admin certificate are used.
    #[arg(long, default_value = "slsd-data")]
    data_dir: PathBuf,
    /// The daemon's configuration file, for its address (`server.listen`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's QUIC address [default: server.listen of --config, or
    /// 127.0.0.1:4433].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The daemon's TCP/TLS fallback, tried when QUIC does not connect
    /// within --connect-wait [default: server.tcp-listen of --config].
    #[arg(long)]
    tcp_addr: Option<SocketAddr>,
    /// How long QUIC (then TCP) is given to connect.
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    connect_wait: std::time::Duration,
    /// Print the reply as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    operation: AdminOperation,
}

/// Which page of a list: entries after a key (device or share id, audit
/// sequence number), at most `limit` (and at most 500). A page shorter
/// than asked is the last; the next starts after its last key.
#[derive(Debug, Clone, Copy, clap::Args)]
struct PageArgs {
    #[arg(long, default_value_t = 0)]
    after: u64,
    #[arg(long, default_value_t = 100)]
    limit: u16,
}

impl From<PageArgs> for Page {
    fn from(args: PageArgs) -> Self {
        Self {
            after: args.after,
            limit: args.limit,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum AdminOperation {
    /// Register a device for a user (a key is generated unless --secret).
    Enroll {
        #[arg(value_parser = username)]
        user: Username,
        /// dsc-plus, scc, online-scc, ib-key, temporary, legacy-dsc, gold, platinum.
        #[arg(value_parser = kind)]
        kind: DeviceKind,
        /// The device's key, in hex.
        #[arg(long, value_parser = secret)]
        secret: Option<SecretKey>,
        /// The PIN of devices whose suite binds one (DSC+, legacy DSC).
        #[arg(long)]
        pin: Option<String>,
        #[arg(long, default_value = "")]
        label: String,
        /// totp-app: also write the otpauth:// URI as a QR code (SVG) to
        /// this file, readable by its owner only (it holds the key).
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// Withdraw a device for good.
    Revoke { device: u64 },
    /// Remove everything held about a user (devices, numbers, account,
    /// ledger, shares); the audit log keeps its entries about them under
    /// a keyed pseudonym. Cannot be undone.
    Erase {
        #[arg(value_parser = username)]
        user: Username,
    },
    /// Rotate the at-rest key: a new key seals from now on, a background
    /// pass re-seals every stored secret under it while the daemon serves,
    /// and the old key is dropped from secrets.key when the pass ends
    /// (`slsd admin keyring` shows when). A backup taken before opens only
    /// with the keyring of its time.
    RotateKey,
    /// The at-rest keyring: the active key, the keys still retiring, and
    /// the records this node has re-sealed since it started.
    Keyring,
    /// Where a rolling upgrade of a cluster stands: the format of the
    /// deployment's records, the newest this node's release reads, and
    /// the nodes alive that run an older release.
    Upgrade,
    /// End a rolling upgrade once every node runs the new release: the
    /// deployment's records take its format from now on (refused while a
    /// node of an older release is alive; a node of an older release
    /// cannot start afterwards).
    FinishUpgrade,
    /// Every device of a user, with its state.
    Devices {
        #[arg(value_parser = username)]
        user: Username,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Clear the lockouts of a user (one device, or all).
    Unlock {
        #[arg(value_parser = username)]
        user: Username,
        #[arg(long)]
        device: Option<u64>,
    },
    /// Counters of the running service.
    Stats,
    /// Import a vendor's tokens from a PSKC file (RFC 6030), all or none.
    ImportTokens {
        file: PathBuf,
        /// A file holding the pre-shared key, in hex.
        #[arg(long, conflicts_with = "password_file")]
        psk_file: Option<PathBuf>,
        /// A file holding the password the key is derived from (PBKDF2).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Enrol an unassigned token as a device of a user.
    AssignToken {
        #[arg(value_parser = serial)]
        serial: Serial,
        #[arg(value_parser = username)]
        user: Username,
        /// The card's PIN, for a suite that binds one (P).
        #[arg(long)]
        pin: Option<String>,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Find a drifted token again by two consecutive codes (an OCRA card's
    /// answers to the question of all zeros).
    Resync {
        device: u64,
        code1: String,
        code2: String,
    },
    /// Reset a forgotten card PIN: prints a challenge, then reads the PIN
    /// the user chose and the card's answer with it from standard input.
    ResetPin { device: u64 },
    /// Retire tokens (one serial, or a range): an assigned token's device
    /// is revoked; a retired token is never assigned again.
    RetireTokens {
        #[arg(value_parser = serial, required_unless_present_all = ["serial_from", "serial_to"], conflicts_with_all = ["serial_from", "serial_to"])]
        serial: Option<Serial>,
        #[arg(long, value_parser = serial, requires = "serial_to")]
        serial_from: Option<Serial>,
        #[arg(long, value_parser = serial, requires = "serial_from")]
        serial_to: Option<Serial>,
    },
    /// The token inventory by serial.
    Tokens {
        /// unassigned, assigned or retired.
        #[arg(long, value_parser = token_state)]
        state: Option<&'static str>,
        #[arg(long, value_parser = serial)]
        serial_from: Option<Serial>,
        #[arg(long, value_parser = serial)]
        serial_to: Option<Serial>,
        /// The page: tokens after this serial.
        #[arg(long, value_parser = serial)]
        after: Option<Serial>,
        #[arg(long, default_value_t = 100)]
        limit: u16,
    },
    /// Register a verified number as the user's SMS device.
    EnrollPhone {
        #[arg(value_parser = username)]
        user: Username,
        /// `+<country> <national number>`, e.g. "+41 446681800".
        #[arg(value_parser = number)]
        number: PhoneNumber,
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Set the push public key (32 bytes, hex) of an IB Key device.
    BindPushKey {
        device: u64,
        #[arg(value_parser = push_key)]
        key: PushKey,
    },
    /// Send a confirm code by SMS to a number being added to a user.
    VerifyPhone {
        #[arg(value_parser = username)]
        user: Username,
        #[arg(value_parser = number)]
        number: PhoneNumber,
    },
    /// Check the confirm code the user received.
    ConfirmPhone {
        #[arg(value_parser = username)]
        user: Username,
        code: String,
    },
    /// Record a user's identification data (sls keeps only a digest).
    SetIdentity {
        #[arg(value_parser = username)]
        user: Username,
        /// Country of residence, ISO 3166 alpha-2 (e.g. CH).
        #[arg(long)]
        residence: String,
        /// YYYY-MM-DD.
        #[arg(long)]
        date_of_birth: String,
        #[arg(long)]
        citizenship: String,
        /// Document type and number, as printed.
        #[arg(long)]
        id_document: String,
    },
    /// Opt a user out of the Secure Login System.
    OptOut {
        #[arg(value_parser = username)]
        user: Username,
    },
    /// Opt a user back in.
    OptIn {
        #[arg(value_parser = username)]
        user: Username,
    },
    /// Let a user use another user's physical device, proven by a challenge
    /// opened for the owner and that device and its answer.
    Share {
        #[arg(value_parser = username)]
        requesting_user: Username,
        #[arg(value_parser = username)]
        owner_user: Username,
        device: u64,
        /// The challenge id (hex), as the gateway got it.
        #[arg(long, value_parser = handle)]
        challenge: u64,
        #[arg(long)]
        response: String,
    },
    /// Approve a pending share (compliance).
    ApproveShare {
        #[arg(value_parser = handle)]
        share: u64,
    },
    /// Reject a pending share.
    RejectShare {
        #[arg(value_parser = handle)]
        share: u64,
    },
    /// End a share; the requester's own devices work again.
    CancelShare {
        #[arg(value_parser = handle)]
        share: u64,
    },
    /// Every share, pending or in effect (by share id).
    Shares {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Issue a temporary code for a user whose device is lost.
    TemporaryCode {
        #[arg(value_parser = username)]
        user: Username,
    },
    /// Order a replacement DSC+ for a lost physical device.
    OrderReplacement {
        lost: u64,
        #[arg(long)]
        pin: Option<String>,
        #[arg(long, default_value = "replacement DSC+")]
        label: String,
    },
    /// Record that a replacement was shipped (it activates itself later).
    ShipReplacement {
        device: u64,
        /// YYYY-MM-DD (midnight UTC) or milliseconds since the epoch
        /// [default: now].
        #[arg(long, value_parser = moment)]
        shipped_at: Option<Timestamp>,
    },
    /// Replacements shipped and not yet active (by device id).
    PendingActivations {
        #[command(flatten)]
        page: PageArgs,
    },
    /// The audit log of registry changes (by sequence number).
    Audit {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Write a consistent copy of the database while the daemon serves.
    /// The daemon writes FILE (on its machine, as its user; it must not
    /// exist). The key file is not in it: a restore (`slsd restore`)
    /// needs the data directory's secrets.key, kept elsewhere.
    Backup { file: PathBuf },
}

fn username(text: &str) -> Result<Username, String> {
    Username::new(text).map_err(|e| e.to_string())
}

fn kind(text: &str) -> Result<DeviceKind, String> {
    text.parse::<DeviceKind>().map_err(|e| e.to_string())
}

fn secret(text: &str) -> Result<SecretKey, String> {
    SecretKey::from_hex(text).map_err(|e| e.to_string())
}

fn number(text: &str) -> Result<PhoneNumber, String> {
    PhoneNumber::parse(text).map_err(|e| e.to_string())
}

fn push_key(text: &str) -> Result<PushKey, String> {
    let bytes = hex::decode(text).map_err(|e| e.to_string())?;
    bytes
        .try_into()
        .map(PushKey)
        .map_err(|_| "a push key is 32 bytes (64 hex digits)".to_owned())
}

/// A share or challenge id as sls prints it (16 hex digits).
fn handle(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|_| format!("{text:?} is not a hex id"))
}

fn serial(text: &str) -> Result<Serial, String> {
    Serial::new(text).map_err(|e| e.to_string())
}

fn token_state(text: &str) -> Result<&'static str, String> {
    TOKEN_STATES
        .into_iter()
        .find(|s| *s == text)
        .ok_or_else(|| format!("{text:?} is not unassigned, assigned or retired"))
}

fn moment(text: &str) -> Result<Timestamp, String> {
    if let Ok(millis) = text.parse::<u64>() {
        return Ok(Timestamp(millis));
    }
    Day::parse(text)
        .map(|day| Timestamp(u64::from(day.0) * 86_400_000))
        .ok_or_else(|| format!("{text:?} is neither YYYY-MM-DD nor milliseconds"))
}

impl AdminOperation {
    /// The one request of this command (`import-tokens` is many).
    fn into_operation(self) -> anyhow::Result<Operation> {
        Ok(match self {
            Self::Enroll {
                user,
                kind,
                secret,
                pin,
                label,
                qr: _,
            } => Operation::Enroll(EnrollRequest {
                user,
                kind,
                secret,
                pin: pin.as_deref().map(Pin::new),
                label,
            }),
            Self::Revoke { device } => Operation::Revoke {
                device: DeviceId(device),
            },
            Self::Erase { user } => Operation::Erase { user },
            Self::RotateKey => Operation::Keyring { rotate: true },
            Self::Keyring => Operation::Keyring { rotate: false },
            Self::Upgrade => Operation::Upgrade { finish: false },
            Self::FinishUpgrade => Operation::Upgrade { finish: true },
            Self::Devices { user, page } => Operation::ListDevices {
                user,
                page: page.into(),
            },
            Self::Unlock { user, device } => Operation::Unlock {
                user,
                device: device.map(DeviceId),
            },
            Self::Stats => Operation::Stats,
            Self::ImportTokens { .. } => bail!("import-tokens is not one request"),
            Self::RetireTokens { .. } => bail!("retire-tokens is not one request"),
            Self::ResetPin { .. } => bail!("reset-pin is not one request"),
            Self::Resync {
                device,
                code1,
                code2,
            } => Operation::Resync {
                device: DeviceId(device),
                first: Answer::new(&code1),
                second: Answer::new(&code2),
            },
            Self::AssignToken {
                serial,
                user,
                pin,
                label,
            } => Operation::AssignToken {
                serial,
                user,
                pin: pin.as_deref().map(Pin::new),
                label,
            },
            Self::Tokens {
                state,
                serial_from,
                serial_to,
                after,
                limit,
            } => Operation::Tokens {
                filter: TokenFilter {
                    state,
                    from: serial_from,
                    to: serial_to,
                },
                after,
                limit,
            },
            Self::EnrollPhone {
                user,
                number,
                label,
            } => Operation::EnrollPhone {
                user,
                number,
                label,
            },
            Self::BindPushKey { device, key } => Operation::BindPushKey {
                device: DeviceId(device),
                key,
            },
            Self::VerifyPhone { user, number } => {
                Operation::StartPhoneVerification { user, number }
            }
            Self::ConfirmPhone { user, code } => Operation::ConfirmPhone {
                user,
                code: Answer::new(&code),
            },
            Self::SetIdentity {
                user,
                residence,
                date_of_birth,
                citizenship,
                id_document,
            } => Operation::SetIdentity {
                user,
                identity: Identification {
                    residence,
                    date_of_birth,
                    citizenship,
                    id_document,
                },
            },
            Self::OptOut { user } => Operation::SetOptOut {
                user,
                opted_out: true,
            },
            Self::OptIn { user } => Operation::SetOptOut {
                user,
                opted_out: false,
            },
            Self::Share {
                requesting_user,
                owner_user,
                device,
                challenge,
                response,
            } => Operation::ShareDevice {
                requesting_user,
                owner_user,
                device: DeviceId(device),
                challenge: ChallengeId(challenge),
                response: Answer::new(&response),
            },
            Self::ApproveShare { share } => Operation::DecideShare {
                share: ShareId(share),
                approve: true,
            },
            Self::RejectShare { share } => Operation::DecideShare {
                share: ShareId(share),
                approve: false,
            },
            Self::CancelShare { share } => Operation::CancelShare {
                share: ShareId(share),
            },
            Self::Shares { page } => Operation::Shares { page: page.into() },
            Self::TemporaryCode { user } => Operation::IssueTemporaryCode { user },
            Self::OrderReplacement { lost, pin, label } => Operation::OrderReplacement {
                lost: DeviceId(lost),
                pin: pin.as_deref().map(Pin::new),
                label,
            },
            Self::ShipReplacement { device, shipped_at } => Operation::ShipReplacement {
                device: DeviceId(device),
                shipped_at: shipped_at.unwrap_or_else(slsd::clock::now),
            },
            Self::PendingActivations { page } => {
                Operation::PendingActivations { page: page.into() }
            }
            Self::Audit { page } => Operation::AuditLog {
                after: page.after,
                limit: page.limit,
            },
            Self::Backup { file } => {
                // The daemon's path: a relative one is taken from here,
                // which is the same place when both run on one machine.
                let file =
                    std::path::absolute(&file).with_context(|| format!("{}", file.display()))?;
                let path = file
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: not UTF-8", file.display()))?;
                Operation::Backup { path: path.into() }
            }
        })
    }
}

/// Where the daemon listens and its server name: `--addr`, else
/// `server.listen` of `--config` (an unspecified address means this
/// machine), else the default; `--tcp-addr`, else `server.tcp-listen`;
/// the name is `server.name` of `--config` (default `localhost`), which
/// the server certificate must carry.
fn address(args: &AdminArgs) -> anyhow::Result<(Endpoints, String, Config)> {
    let config = match &args.config {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
            slsd::config::Config::from_toml(&text)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?
        }
        None => slsd::config::Config::default(),
    };
    let name = config.server.name.clone();
    let this_machine = |mut addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    };
    let endpoints = Endpoints {
        quic: args
            .addr
            .unwrap_or_else(|| this_machine(config.server.listen)),
        tcp: args
            .tcp_addr
            .or_else(|| config.server.tcp_listen.map(this_machine)),
        wait: args.connect_wait,
    };
    Ok((endpoints, name, config))
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let (endpoints, server_name, config) = address(&args)?;
    let addr = endpoints.quic;
    let paths = PkiPaths::new(&args.data_dir);
    if !paths.ca_cert().exists() {
        bail!(
            "{}: not a data directory of slsd (no {}); pass --data-dir",
            args.data_dir.display(),
            paths.ca_cert().display()
        );
    }
    let tls = pki::client_tls(
        &paths.ca_cert(),
        &paths.client_cert(Role::Admin),
        &paths.client_key(Role::Admin),
    )
    .map_err(|e| anyhow!("admin certificate in {}: {e}", args.data_dir.display()))?;
    let json = args.json;
    // The QR code's file is made before the device is: an enrolment whose
    // key cannot be written out is not made at all.
    let mut qr = match &args.operation {
        AdminOperation::Enroll {
            qr: Some(path),
            kind,
            ..
        } => {
            if *kind != DeviceKind::TotpApp {
                bail!("--qr is for an authenticator app (totp-app), not {kind}");
            }
            Some(QrFile::create(path)?)
        }
        _ => None,
    };
    let job = match args.operation {
        // The file is read and checked whole before anything is sent.
        AdminOperation::ImportTokens {
            file,
            psk_file,
            password_file,
        } => {
            let secrets = crate::tokens::Secrets {
                psk_file: psk_file.as_deref(),
                password_file: password_file.as_deref(),
            };
            Job::Import(crate::tokens::read_file(&file, &secrets, &config)?)
        }
        AdminOperation::RetireTokens {
            serial,
            serial_from,
            serial_to,
        } => match (serial, serial_from, serial_to) {
            (Some(one), _, _) => Job::Retire(one.clone(), one),
            (None, Some(from), Some(to)) => Job::Retire(from, to),
            _ => bail!("retire-tokens needs SERIAL, or --serial-from and --serial-to"),
        },
        AdminOperation::ResetPin { device } => Job::ResetPin(DeviceId(device)),
        operation => Job::One(operation.into_operation()?),
    };
    let many = match &job {
        Job::Import(_) => Some("imported"),
        Job::Retire(..) => Some("retired"),
        Job::ResetPin(_) | Job::One(_) => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let value = runtime.block_on(async {
        let client = Client::connect_to(&endpoints, &server_name, tls)
            .await
            .map_err(|e| anyhow!("cannot reach slsd at {addr}: {e}"))?;
        let value = match job {
            Job::Import(batch) => crate::tokens::import(&client, batch, config.server.max_frame)
                .await
                .map_err(|e| anyhow!("slsd at {addr}: {e}"))?,
            Job::Retire(from, to) => crate::tokens::retire(&client, from, to)
                .await
                .map_err(|e| anyhow!("slsd at {addr}: {e}"))?,
            Job::ResetPin(device) => reset_pin(&client, device)
                .await
                .map_err(|e| anyhow!("slsd at {addr}: {e}"))?,
            Job::One(operation) => {
                let reply = client
                    .call(operation)
                    .await
                    .map_err(|e| anyhow!("slsd at {addr}: {e}"))?;
                let mut value = describe(&reply)?;
                if let (Some(file), Reply::AppEnrolled { uri, .. }) = (qr.take(), &reply) {
                    value["qr"] = json!(file.write(uri)?);
                }
                value
            }
        };
        client.close();
        anyhow::Ok(value)
    })?;
    if let Some(done) = many
        && !json
    {
        // The serials are in the JSON form only: there may be millions.
        println!("{done} {} tokens", value[done]);
        return Ok(());
    }
    if json {
        println!("{value}");
    } else {
        print!("{}", human(&value));
    }
    Ok(())
}

/// What one `slsd admin` command asks of the service.
enum Job {
    /// A token file, in as many requests as it takes.
    Import(Vec<slsd::wire::token::NewToken>),
    /// A serial range retired, a page per request.
    Retire(Serial, Serial),
    /// A PIN reset: a challenge, then the answer under the chosen PIN.
    ResetPin(DeviceId),
    One(Operation),
}

/// The file an app's QR code goes to: new, readable by its owner only
/// (the code holds the key), removed again if nothing is written to it.
struct QrFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl QrFile {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Writes `uri` as a QR code in SVG; the file's path.
    fn write(mut self, uri: &slsd::otp::app::AppUri) -> anyhow::Result<String> {
        use std::io::Write;
        let svg = slsd::otp::app::qr_svg(uri.as_str())
            .map_err(|e| anyhow!("the URI does not fit a QR code: {e}"))?;
        let mut file = self.file.take().ok_or_else(|| anyhow!("written already"))?;
        file.write_all(svg.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        Ok(self.path.display().to_string())
    }
}

impl Drop for QrFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `reset-pin`: opens a challenge on the card, shows it, reads the PIN
/// the user chose and the card's answer (standard input, one line each:
/// no secret on the command line), and completes the reset.
async fn reset_pin(client: &Client, device: DeviceId) -> anyhow::Result<Value> {
    let open = Operation::ResetPin {
        device,
        challenge: ChallengeId(0),
        pin: None,
        response: Answer::new(""),
    };
    let (challenge, question) = match client.call(open).await? {
        Reply::Challenge {
            challenge,
            text: ChallengeText::Question(question),
            ..
        } => (challenge, question),
        other => return describe(&other),
    };
    eprintln!("Type {question} into the card with the PIN the user chooses.");
    let mut lines = std::io::stdin().lines();
    let mut ask = |what: &str| -> anyhow::Result<String> {
        eprint!("{what}: ");
        let line = lines
            .next()
            .ok_or_else(|| anyhow!("no {what} on standard input"))??;
        Ok(line.trim().to_owned())
    };
    let pin = ask("new PIN")?;
    let response = ask("the card's answer")?;
    let complete = Operation::ResetPin {
        device,
        challenge,
        pin: Some(Pin::new(&pin)),
        response: Answer::new(&response),
    };
    match client.call(complete).await? {
        Reply::Verdict(Verdict::Accepted { .. }) => {
            Ok(json!({ "device": device.0, "pin": "reset" }))
        }
        other => describe(&other),
    }
}

/// A moment as UTC date and time (RFC 3339).
fn time(at: Timestamp) -> String {
    let seconds = at.0 / 1000 % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        Day::of(at).iso(),
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn device_status(status: DeviceStatus) -> String {
    match status {
        DeviceStatus::Active => "active".into(),
        DeviceStatus::Expired => "expired".into(),
        DeviceStatus::Ordered => "ordered".into(),
        DeviceStatus::Shipped { activates_at } => {
            format!("shipped, activates {}", time(activates_at))
        }
        DeviceStatus::Suspended => "suspended".into(),
        DeviceStatus::Pending => "pending its first code".into(),
    }
}

/// The reply as one JSON value; a failure (error, rejected code, refusal)
/// as the one line to print.
fn describe(reply: &Reply) -> anyhow::Result<Value> {
    Ok(match reply {
        Reply::Done => json!({ "result": "done" }),
        Reply::Enrolled { device, secret } => {
            let mut out = json!({ "device": device.0 });
            if let Some(secret) = secret {
                // Shown once: the operator hands it to the device.
                out["secret"] = json!(hex::encode(secret.expose_secret()));
            }
            out
        }
        Reply::AppEnrolled { device, uri } => json!({
            "device": device.0,
            // Shown once: the user adds it to their app.
            "uri": uri.as_str(),
        }),
        Reply::Devices { required, devices } => json!({
            "second_factor_required": required,
            "devices": devices.iter().map(|d| json!({
                "device": d.device.0,
                "kind": d.kind.to_string(),
                "label": d.label,
                "status": device_status(d.status),
                "locked_for_s": d.locked_for.as_secs(),
                "owner": d.owner.as_ref().map(Username::to_string),
            })).collect::<Vec<_>>(),
        }),
        Reply::Erased {
            pseudonym,
            devices,
            audit_entries,
        } => json!({
            "erased": true,
            "pseudonym": pseudonym.as_str(),
            "devices": devices,
            "audit_entries": audit_entries,
        }),
        Reply::Keyring {
            active,
            retiring,
            resealed,
        } => json!({
            "active_key": active,
            "retiring_keys": retiring,
            "resealed": resealed,
            "rotation": if retiring.is_empty() {
                "none under way: every stored secret is sealed under the active key"
            } else {
                "re-sealing under the active key; the retiring keys are dropped when it ends"
            },
        }),
        Reply::Upgrade {
            format,
            release,
            nodes,
            behind,
        } => json!({
            "records_format": format,
            "release_format": release,
            "nodes": nodes,
            "nodes_behind": behind,
            "upgrade": if *format >= *release {
                "none under way: the records have this release's format"
            } else if *behind > 0 {
                "under way: upgrade the nodes behind, then run finish-upgrade"
            } else {
                "every node alive runs this release: run finish-upgrade"
            },
        }),
        Reply::BackedUp {
            path,
            bytes,
            devices,
            rows,
            last_audit,
            took,
        } => json!({
            "backup": path,
            "bytes": bytes,
            "devices": devices,
            "rows": rows,
            "last_audit": last_audit,
            "took_ms": took.as_millis(),
            "key_file": "not in the backup: a restore needs the data directory's secrets.key, kept elsewhere",
        }),
        Reply::Stats(stats) => Value::Object(
            stats
                .iter()
                .map(|s| (s.name.clone(), json!(s.value)))
                .collect::<Map<_, _>>(),
        ),
        Reply::VerificationSent { expires_in } => {
            json!({ "result": "confirm code sent", "expires_in_s": expires_in.as_secs() })
        }
        Reply::PhoneConfirmed { sms_device } => json!({
            "result": "number confirmed",
            "sms_device": sms_device.map(|d| d.0),
        }),
        Reply::Share { share, active } => json!({
            "share": share.to_string(),
            "state": if *active { "active" } else { "pending approval" },
        }),
        Reply::Shares(shares) => json!({
            "shares": shares.iter().map(|s| json!({
                "share": s.share.to_string(),
                "requesting_user": s.requesting_user.to_string(),
                "owner_user": s.owner_user.to_string(),
                "device": s.device.0,
                "state": if s.active { "active" } else { "pending approval" },
            })).collect::<Vec<_>>(),
        }),
        Reply::TemporaryCode {
            device,
            code,
            expires_in,
            uses,
        } => json!({
            "device": device.0,
            // Shown once: the operator reads it to the user.
            "code": code.as_str(),
            "expires_in_s": expires_in.as_secs(),
            "uses": uses,
        }),
        Reply::PendingActivations(pending) => json!({
            "pending_activations": pending.iter().map(|p| json!({
                "device": p.device.0,
                "user": p.user.to_string(),
                "replaces": p.replaces.0,
                "shipped_at": time(p.shipped_at),
                "activates_at": time(p.activates_at),
            })).collect::<Vec<_>>(),
        }),
        Reply::Tokens(tokens) => json!({
            "tokens": tokens.iter().map(|t| {
                let (user, device) = match &t.state {
                    TokenState::Assigned { user, device } => (Some(user.to_string()), Some(device.0)),
                    _ => (None, None),
                };
                json!({
                    "serial": t.info.serial.to_string(),
                    "state": t.state.name(),
                    "algorithm": t.info.algorithm.to_string(),
                    "user": user,
                    "device": device,
                    "manufacturer": Some(&t.info.manufacturer).filter(|m| !m.is_empty()),
                    "imported_at": time(t.imported_at),
                })
            }).collect::<Vec<_>>(),
        }),
        Reply::Audit(entries) => json!({
            "audit": entries.iter().map(|e| json!({
                "seq": e.seq,
                "at": time(e.at),
                "actor": e.actor,
                "action": e.action,
                "user": e.user.as_ref().map(Username::to_string),
                "device": e.device.map(|d| d.0),
                "detail": e.detail,
            })).collect::<Vec<_>>(),
        }),
        Reply::Verdict(Verdict::Rejected { attempts_left }) => {
            bail!("wrong code: {attempts_left} attempts left")
        }
        Reply::Verdict(Verdict::Expired) => bail!("the code has expired"),
        Reply::Verdict(Verdict::LockedOut { retry_after }) => {
            bail!("locked out: retry in {} s", retry_after.as_secs())
        }
        Reply::Verdict(Verdict::UnknownChallenge) => bail!("no such challenge"),
        Reply::Verdict(verdict) => json!({ "verdict": format!("{verdict:?}") }),
        Reply::Refused { reason, message } => bail!("refused ({}): {message}", reason.as_str()),
        Reply::Error { code, message, .. } => bail!("{code:?}: {message}"),
        // Replies of other roles never answer an admin operation.
        other => bail!("unexpected reply {other:?}"),
    })
}

/// `key: value` lines; a list of records as one line per record.
fn human(value: &Value) -> String {
    let mut out = String::new();
    let Value::Object(fields) = value else {
        return format!("{value}\n");
    };
    for (key, field) in fields {
        match field {
            Value::Array(items) => {
                out.push_str(&format!("{key}: {}\n", items.len()));
                for item in items {
                    out.push_str("  ");
                    out.push_str(&inline(item));
                    out.push('\n');
                }
            }
            other => out.push_str(&format!("{key}: {}\n", scalar(other))),
        }
    }
    out
}

fn inline(value: &Value) -> String {
    match value {
        Value::Object(fields) => fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect::<Vec<_>>()
            .join("  "),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) if text.contains(' ') => format!("{text:?}"),
        Value::String(text) => text.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
