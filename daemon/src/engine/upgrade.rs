//! A rolling upgrade, for the operator: where it stands (`Upgrade`,
//! `slsd admin upgrade`) and its end (`slsd admin finish-upgrade`).
//!
//! On a cluster, nodes of two releases serve side by side while they are
//! upgraded one at a time, every node writing the deployment's record
//! format (`store::cluster::release`). Finishing raises that format to
//! this node's release's once no node of an older release is alive. One
//! node on its embedded store has nothing to finish: its database was
//! carried to this release's format when it opened.

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::store::cluster::RELEASE_POLLS;
use crate::store::sealed::Adopted;
use crate::store::{Store, StoreError};
use crate::wire::{ErrorCode, Reply};

impl Engine {
    /// On a cluster, at start and every `keys.poll` after (the server's
    /// task): follows the format of the deployment's records, says which
    /// release this node runs, and follows the deployment's keyring.
    /// `NewerFormat` when a newer release finished an upgrade meanwhile:
    /// this node must stop (it would write records the others misread).
    pub async fn follow_deployment(&self, now: Timestamp) -> Result<Adopted, StoreError> {
        let Some(store) = &self.cluster else {
            return Ok(Adopted::Unchanged);
        };
        store.follow_format().await?;
        let until = now.plus(self.release_word_lasts());
        store.announce_release(&self.node, until).await?;
        store.follow_keyring().await
    }

    /// How long a node's word about its release holds unrenewed: a node
    /// that stopped without withdrawing it still counts for this long.
    fn release_word_lasts(&self) -> std::time::Duration {
        self.config().keys.poll * RELEASE_POLLS
    }

    /// On a cluster: withdraws this node's word about its release (it
    /// stops), so an upgrade can finish without waiting for it to lapse.
    pub async fn leave_deployment(&self) -> Result<(), StoreError> {
        match &self.cluster {
            Some(store) => store.withdraw_release(&self.node).await,
            None => Ok(()),
        }
    }

    /// `Upgrade`: where the upgrade stands, after finishing it when
    /// `finish` and every node alive runs this release (or a newer one).
    pub(super) async fn upgrade<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        finish: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let Some(store) = &self.cluster else {
            let format = crate::store::embedded::registry::FORMAT;
            return Ok(Reply::Upgrade {
                format,
                release: format,
                nodes: 1,
                behind: 0,
            });
        };
        let mut state = store.upgrade_state(now).await?;
        if finish && state.unfinished() {
            if state.behind > 0 {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{} of the {} nodes alive run a release that reads only a format older \
                         than {}: upgrade them first (a node that stopped without saying so \
                         counts for {:?})",
                        state.behind,
                        state.nodes,
                        state.release,
                        self.release_word_lasts()
                    ),
                ));
            }
            let from = state.format;
            state.format = store.raise_format(from).await?;
            let detail = format!(
                "records of format {from} now written as format {}",
                state.format
            );
            store
                .audit_inventory(Self::actor(caller), now, rng, "finish-upgrade", detail)
                .await?;
            tracing::info!(from, to = state.format, "upgrade finished");
        }
        Ok(Reply::Upgrade {
            format: state.format,
            release: state.release,
            nodes: state.nodes,
            behind: state.behind,
        })
    }
}
