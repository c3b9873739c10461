//! What is known of each operation before it runs: whether it changes the
//! registry, whether it issues something, and whether the caller's role
//! may ask it. One exhaustive match each, which the compiler checks.

use super::Role;
use crate::wire::{ErrorCode, Operation, Reply};

/// What the server must know of an operation before it runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// It may write the registry on the embedded store (a commit, with
    /// fsync, before its reply): the server runs it off the threads that
    /// answer logins. `Verify` is not one: its rare writes (a temporary
    /// code's use, a replacement's activation) stay on the hot path; nor is
    /// `AuthorizeWithdrawal`, whose booking the commit thread writes.
    pub changes_registry: bool,
    /// It issues something a user is limited in (a challenge, a code, a
    /// push, a token), so it counts toward the connection's issuance quota
    /// as well as the user's.
    pub issues: bool,
}

impl Facts {
    const READS: Self = Self {
        changes_registry: false,
        issues: false,
    };
    const CHANGES: Self = Self {
        changes_registry: true,
        issues: false,
    };
    const ISSUES: Self = Self {
        changes_registry: false,
        issues: true,
    };
}

/// The facts of `operation`. Every operation is named, none by a
/// wildcard: a new one does not compile until it says what it is (left
/// off a positive list, a registry change would run its fsync on the
/// threads that answer logins, and an issuance would escape the
/// connection's quota).
pub fn facts(operation: &Operation) -> Facts {
    match operation {
        Operation::Enroll(_)
        | Operation::Revoke { .. }
        | Operation::Erase { .. }
        // A key rotation writes the keyring file (fsync) and an audit entry.
        | Operation::Keyring { .. }
        // Finishing an upgrade writes the deployment's format and an audit entry.
        | Operation::Upgrade { .. }
        | Operation::Unlock { .. }
        | Operation::EnrollPhone { .. }
        | Operation::BindPushKey { .. }
        | Operation::SetIdentity { .. }
        | Operation::SetOptOut { .. }
        | Operation::ShareDevice { .. }
        | Operation::DecideShare { .. }
        | Operation::CancelShare { .. }
        | Operation::IssueTemporaryCode { .. }
        | Operation::OrderReplacement { .. }
        | Operation::ShipReplacement { .. }
        | Operation::ConfirmPhone { .. }
        | Operation::CompleteActivation { .. }
        | Operation::ImportTokens { .. }
        | Operation::AssignToken { .. }
        | Operation::Resync { .. }
        | Operation::RetireTokens { .. }
        | Operation::ChangePin { .. }
        | Operation::ResetPin { .. }
        // Not a change, but seconds to minutes of disk work: off the
        // threads that answer logins, like one.
        | Operation::Backup { .. } => Facts::CHANGES,
        Operation::Challenge { .. }
        | Operation::Push { .. }
        | Operation::SendCode { .. }
        | Operation::StartActivation { .. }
        | Operation::StartPhoneVerification { .. } => Facts::ISSUES,
        Operation::Devices { .. }
        | Operation::Verify { .. }
        // A verification and an in-memory booking, committed with the
        // failure states by the commit thread (`store::embedded::ledger`).
        | Operation::AuthorizeWithdrawal { .. }
        | Operation::VerifyCode { .. }
        | Operation::CodeStatus { .. }
        | Operation::AwaitPush { .. }
        | Operation::ListDevices { .. }
        | Operation::Stats
        | Operation::Shares { .. }
        | Operation::PendingActivations { .. }
        | Operation::AuditLog { .. }
        | Operation::Tokens { .. }
        | Operation::CarrierSubscribe
        | Operation::Ack { .. }
        | Operation::PhoneSubscribe { .. }
        | Operation::Approve { .. }
        | Operation::Deny { .. } => Facts::READS,
    }
}

/// The refusal of an operation that is not the caller's role's (and its
/// security event: a client asking what its certificate does not allow).
pub(super) fn forbidden(
    role: Role,
    operation: &Operation,
    now: crate::clock::Timestamp,
) -> Option<Reply> {
    let needed = operation.role();
    (role != needed).then(|| {
        let why = format!("{} needs the {} role", operation.name(), needed.as_str());
        crate::events::emit(|| {
            let refused = crate::events::Outcome::Failure;
            crate::events::Event::new(
                now,
                "role-refused",
                crate::events::Category::Network,
                refused,
            )
            .actor(role.as_str())
            .reason(why.as_str())
        });
        Reply::error(ErrorCode::Forbidden, why)
    })
}
