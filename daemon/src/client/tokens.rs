//! Bringing a vendor's tokens in: the tokens of a PSKC file (read and
//! checked whole by [`crate::pskc::read`] before anything is sent) in
//! batches that fit the daemon's frames, the last one committing the
//! import. A batch the daemon refuses drops the import there: every token
//! is imported or none. `slsd admin import-tokens` and the simulator's
//! `fleet create --via-pskc` both import this way.

use crate::pskc::ImportedToken;
use crate::wire::request::Request;
use crate::wire::token::{NewToken, TokenInfo};
use crate::wire::{ErrorCode, Operation, Reply};

use super::{Client, ClientError};

/// Why an import did not finish (and so imported nothing).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected reply {0}")]
    Unexpected(String),
}

/// A token read from a file, as an `ImportTokens` request carries it.
pub fn new_token(token: ImportedToken) -> NewToken {
    NewToken {
        info: TokenInfo {
            serial: token.serial,
            algorithm: token.algorithm,
            counter: token.counter,
            valid_from: token.valid_from,
            valid_until: token.valid_until,
            manufacturer: token.manufacturer.unwrap_or_default(),
        },
        key: token.key,
    }
}

/// Sends `tokens` under one import in batches whose bodies fit
/// `max_frame` (the daemon's `server.max-frame`) and commits it;
/// `on_batch` hears how many tokens each accepted batch carried. The
/// number of tokens imported.
pub async fn import_tokens(
    client: &Client,
    tokens: Vec<NewToken>,
    max_frame: u32,
    mut on_batch: impl FnMut(u64),
) -> Result<u64, ImportError> {
    let batches = batches(tokens, max_frame);
    let mut stream = client.stream().await?;
    let (mut import, mut imported) = (0, 0);
    let count = batches.len();
    for (index, batch) in batches.into_iter().enumerate() {
        let sent = batch.len() as u64;
        let commit = index + 1 == count;
        let reply = stream
            .call(Operation::ImportTokens {
                import,
                commit,
                tokens: batch,
            })
            .await?;
        match reply {
            Reply::TokensImported {
                import: id,
                count,
                committed,
            } => {
                import = id;
                on_batch(sent);
                if committed {
                    imported = count;
                }
            }
            Reply::Error { code, message, .. } => {
                return Err(ImportError::Refused { code, message });
            }
            other => return Err(ImportError::Unexpected(format!("{other:?}"))),
        }
    }
    stream.finish().await;
    Ok(imported)
}

/// The tokens cut into requests whose bodies fit `max_frame`.
fn batches(tokens: Vec<NewToken>, max_frame: u32) -> Vec<Vec<NewToken>> {
    let body = |tokens: Vec<NewToken>| {
        let mut out = Vec::new();
        Request {
            id: u64::MAX,
            operation: Operation::ImportTokens {
                import: u64::MAX,
                commit: true,
                tokens,
            },
        }
        .encode_body(&mut out);
        out.len()
    };
    let empty = body(Vec::new());
    let room = usize::try_from(max_frame).unwrap_or(usize::MAX);
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut used = empty;
    for token in tokens {
        let size = body(vec![token.clone()]) - empty;
        if !batch.is_empty() && (used + size > room || batch.len() == usize::from(u16::MAX)) {
            batches.push(std::mem::take(&mut batch));
            used = empty;
        }
        used += size;
        batch.push(token);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}
