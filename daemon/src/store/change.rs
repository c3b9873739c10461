//! What the engine's lifecycle operations need of a store, whichever it
//! is: reads of a user's registry records, and changes decided on them.
//!
//! A change is a closure over [`RegistryChange`]: it reads the records it
//! decides on and writes what it decided, with its audit entries; the
//! store commits all of it or none. The embedded store runs the closure
//! once inside its serialised write transaction (`Registry::change`); the
//! cluster store runs it over a snapshot of the user's records and writes
//! the outcome only if none of them changed meanwhile, running it again
//! on what another node wrote otherwise (`cluster::change`). The closure
//! must therefore decide only from what it reads through the change.
//!
//! A change belongs to one user (its subject): on the cluster everything
//! it writes lives in that user's slot, so it is one atomic write.

use std::future::Future;
use std::sync::Arc;

use rand::CryptoRng;

use crate::clock::Timestamp;
use crate::identity::{DeviceId, Serial, ShareId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::phone::PhoneNumber;
use crate::profile::DeviceKind;
use crate::store::inventory::{ImportId, InventoryToken, Staged, TokenFilter, TokenState};
use crate::store::{Account, Actor, Device, DeviceLife, EnrollError, NewDevice, Share, StoreError};
use crate::wire::token::TokenInfo;

/// A registry change under way: reads as the store was when it began,
/// writes that take effect together when it commits.
pub trait RegistryChange {
    /// A device of the change's user (on the embedded store, any device).
    fn device(&self, id: DeviceId) -> Option<Arc<Device>>;
    /// The devices of the change's user, as the change began.
    fn devices(&self, user: &Username) -> Result<Vec<Arc<Device>>, StoreError>;
    /// The lifecycle state of a device of the change's user.
    fn life(&self, id: DeviceId) -> DeviceLife;
    /// The account of the change's user.
    fn account(&self, user: &Username) -> Result<Account, StoreError>;
    /// A share of the change's user as requester, by id.
    fn share(&self, id: ShareId) -> Option<Share>;
    /// The share (pending or in effect) `requester` asked for, if any.
    fn share_of(&self, requester: &Username) -> Option<Share>;

    /// Registers a device; with no secret, one is generated and returned.
    fn enroll(&mut self, new: NewDevice<'_>) -> Result<(DeviceId, Option<SecretKey>), EnrollError>;
    /// Registers a code typed as it is (a temporary code).
    fn add_code(
        &mut self,
        user: &Username,
        kind: DeviceKind,
        code: SecretKey,
        label: &str,
    ) -> Result<DeviceId, StoreError>;
    /// Registers `number` as the user's SMS device: one number per user,
    /// a second is refused until the first is revoked.
    fn add_phone(
        &mut self,
        user: &Username,
        number: PhoneNumber,
        label: &str,
    ) -> Result<DeviceId, EnrollError>;
    /// Binds an IB Key device (one this change enrolled, too) to its key.
    fn set_push_key(&mut self, id: DeviceId, key: PushKey) -> Result<(), StoreError>;
    /// Removes a device and everything kept beside it.
    fn remove_device(&mut self, id: DeviceId) -> Result<(), StoreError>;
    /// Clears a device's failure count and lockout (an operator's unlock,
    /// a resync); a token's moving factor is kept, raised to at least
    /// `moving` (it never goes back: a used code stays used).
    fn clear_failures(&mut self, id: DeviceId, moving: u64) -> Result<(), StoreError>;
    fn set_user(&mut self, user: &Username, record: Account) -> Result<(), StoreError>;
    fn set_life(&mut self, id: DeviceId, life: DeviceLife) -> Result<(), StoreError>;
    fn set_share(&mut self, share: Share) -> Result<(), StoreError>;
    fn remove_share(&mut self, id: ShareId) -> Result<(), StoreError>;
    /// Removes the change's user's account (residence, identification
    /// digest, number on record, opt-out) and their withdrawals ledger,
    /// which reaches back at most `ledger_days`; their devices and share
    /// are removed one by one beforehand.
    fn erase_user(&mut self, user: &Username, ledger_days: u32) -> Result<(), StoreError>;
    /// Records what this change did in the audit log (never a secret). A
    /// change that writes anything without an audit entry is refused.
    fn audit(
        &mut self,
        action: &str,
        user: Option<&Username>,
        device: Option<DeviceId>,
        detail: String,
    ) -> Result<(), StoreError>;
}

/// What a user is, as the lifecycle rules see them: their account, their
/// devices with their lifecycle states, and the share they asked for.
#[derive(Debug, Clone, Default)]
pub struct UserView {
    pub account: Account,
    pub devices: Vec<(Arc<Device>, DeviceLife)>,
    pub share: Option<Share>,
}

/// A replacement card shipped and not yet active (the auto-activation's
/// and `PendingActivations`' view).
#[derive(Debug, Clone)]
pub struct Shipped {
    pub device: DeviceId,
    pub user: Username,
    pub life: DeviceLife,
}

/// Where a rotation's re-seal pass is (`Store::reseal`): the kind of
/// record it is at (each store numbers its own) and the key of the last
/// record done. The pass's real progress is in the records themselves,
/// each sealed value naming its key: a pass started again from the
/// beginning skips, without opening them, the records already done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealCursor {
    pub stage: u8,
    pub after: Option<Vec<u8>>,
}

/// What one step of a re-seal pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResealStep {
    /// Records read.
    pub examined: u64,
    /// Records written back under the active key.
    pub resealed: u64,
    /// Whether the pass has been through every record.
    pub done: bool,
}

/// The reads and changes of the lifecycle operations, on either store.
///
/// The futures of the embedded store are ready at once (it never waits);
/// the cluster's wait on Redis.
pub trait Store: Sync {
    /// The keyed digest of identification data (what sharing compares):
    /// the same on every node of a deployment (they share the key file).
    fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32];
    /// What `user`'s name becomes in the audit log once they are erased
    /// (a keyed digest of it; the same on every node).
    fn pseudonym(&self, user: &Username) -> Username;
    /// The keyring this store's secrets are sealed under.
    fn keyring(&self) -> &crate::store::sealed::SecretCipher;
    /// Adds a key to the keyring and makes it the one new seals use: on
    /// the cluster, published first to the record every node follows,
    /// each key in it sealed under a key the nodes already hold.
    fn rotate_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> impl Future<Output = Result<crate::store::sealed::KeyId, StoreError>>;
    /// Drops the retiring keys (and, on the cluster, from the published
    /// keyring); which.
    fn retire_keys<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> impl Future<Output = Result<Vec<crate::store::sealed::KeyId>, StoreError>>;
    /// One step of a rotation's pass: up to `limit` records from `cursor`
    /// on, each sealed value in them opened and sealed again under the
    /// active key (a record already under it is left as it is); `cursor`
    /// moves past them. Once a step says `done`, everything the pass
    /// wrote is durable.
    fn reseal<R: CryptoRng + ?Sized>(
        &self,
        cursor: &mut ResealCursor,
        limit: usize,
        rng: &mut R,
    ) -> impl Future<Output = Result<ResealStep, StoreError>>;
    /// Rewrites the audit log's entries that name `user` (`records::
    /// pseudonymized`) up to the last `erase` entry of `pseudonym`, so an
    /// entry of someone given the name afterwards keeps it; how many.
    fn pseudonymize_audit(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> impl Future<Output = Result<u64, StoreError>>;
    fn device(&self, id: DeviceId)
    -> impl Future<Output = Result<Option<Arc<Device>>, StoreError>>;
    fn user_view(&self, user: &Username) -> impl Future<Output = Result<UserView, StoreError>>;
    /// Who asked for a share (whose change decides it).
    fn share_requester(
        &self,
        id: ShareId,
    ) -> impl Future<Output = Result<Option<Username>, StoreError>>;
    /// Every share, pending or in effect.
    fn shares(&self) -> impl Future<Output = Result<Vec<Share>, StoreError>>;
    /// Every shipped replacement not yet active.
    fn shipped(&self) -> impl Future<Output = Result<Vec<Shipped>, StoreError>>;
    /// Writes a batch of tokens staged under `import` (created staged at
    /// `now` when new), all or none: a serial the inventory or another
    /// import holds writes nothing and is named.
    fn stage_tokens<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        tokens: &[(TokenInfo, SecretKey)],
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Staged, StoreError>>;
    /// Makes a staged import's tokens the inventory's, with its audit
    /// entry; its token count, or `None` when no such import is staged.
    fn commit_import<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>>;
    /// Drops an import still staged, and its tokens.
    fn drop_import(&self, import: ImportId) -> impl Future<Output = Result<(), StoreError>>;
    /// Imports staged before `before` (their importers gone).
    fn stale_imports(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<Vec<ImportId>, StoreError>>;
    /// The inventory's tokens in serial order, after `after`, those
    /// `filter` lets through, at most `limit`.
    fn tokens(
        &self,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<InventoryToken>, StoreError>>;
    /// A device's failure state as the store holds it now.
    fn failure_state(
        &self,
        device: &Device,
    ) -> impl Future<Output = Result<crate::store::FailureState, StoreError>>;
    /// A token of the inventory (its import committed) with its key.
    fn token(
        &self,
        serial: &Serial,
    ) -> impl Future<Output = Result<Option<(InventoryToken, SecretKey)>, StoreError>>;
    /// Moves a token from state `from` to `to`; false (nothing changed)
    /// when it is not in `from` any more.
    fn swap_token_state(
        &self,
        serial: &Serial,
        from: &TokenState,
        to: &TokenState,
    ) -> impl Future<Output = Result<bool, StoreError>>;
    /// A PIN chosen for `device` in place of its own, checked as an
    /// enrolment checks a PIN (the kind's or token suite's digits),
    /// hashed and sealed; `Invalid` for a device that takes no PIN.
    fn changed_pin<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        device: &Device,
        pin: &str,
    ) -> Result<crate::store::ChangedPin, EnrollError>;
    /// Appends an entry about the inventory (no user's records changed)
    /// to the audit log: written after the change it records, as the
    /// cluster writes an import's.
    fn audit_inventory<R: CryptoRng + ?Sized>(
        &self,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
        action: &str,
        detail: String,
    ) -> impl Future<Output = Result<(), StoreError>>;
    /// Runs `decide` as one change of `user`'s records, committed with its
    /// audit entries or not at all; `decide` may run more than once (on
    /// the cluster, again on what another node wrote meanwhile).
    fn change<R, T, E>(
        &self,
        user: &Username,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
        decide: impl FnMut(&mut dyn RegistryChange) -> Result<T, E>,
    ) -> impl Future<Output = Result<T, E>>
    where
        R: CryptoRng + ?Sized,
        E: From<StoreError>;
}
