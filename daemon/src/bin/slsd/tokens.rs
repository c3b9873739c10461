//! `slsd admin import-tokens`: a vendor's PSKC file read and checked
//! whole here (every MAC, algorithm, serial and key), then sent by
//! `slsd::client::tokens` (batches that fit the daemon's frames, the last
//! one committing the import). A file that does not read sends nothing.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use slsd::client::Client;
use slsd::client::tokens::{import_tokens, new_token};
use slsd::config::Config;
use slsd::identity::Serial;
use slsd::pskc::{self, Limits, Opening};
use slsd::wire::token::NewToken;
use slsd::wire::{Operation, Reply};

/// Where the key that opens the file comes from (no secret on the command
/// line).
pub struct Secrets<'a> {
    pub psk_file: Option<&'a Path>,
    pub password_file: Option<&'a Path>,
}

/// Reads the file whole: every token, or the reason none is imported.
pub fn read_file(
    file: &Path,
    secrets: &Secrets<'_>,
    config: &Config,
) -> anyhow::Result<Vec<NewToken>> {
    let psk = match secrets.psk_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
            Some(pskc::pre_shared_key(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let password = match secrets.password_file {
        Some(path) => Some(zeroize::Zeroizing::new(
            std::fs::read(path).with_context(|| format!("{}", path.display()))?,
        )),
        None => None,
    };
    let opening = match (&psk, &password) {
        (Some(_), Some(_)) => bail!("give --psk-file or --password-file, not both"),
        (Some(key), None) => Opening::PreSharedKey(key),
        (None, Some(password)) => Opening::Password(pskc::password(password)),
        (None, None) => Opening::Nothing,
    };
    let limits = Limits {
        max_tokens: usize::try_from(config.tokens.import_max).unwrap_or(usize::MAX),
        min_key_bytes: config.tokens.min_key_bytes,
    };
    let handle = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
    let size = handle.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = bar(size, "reading");
    let reader = BufReader::with_capacity(1 << 16, progress.wrap_read(handle));
    let tokens = read_tokens(reader, opening, &limits)
        .map_err(|e| anyhow!("{}: {e}; nothing was imported", file.display()))?;
    progress.finish_and_clear();
    Ok(tokens)
}

fn read_tokens<R: BufRead>(
    reader: R,
    opening: Opening<'_>,
    limits: &Limits,
) -> Result<Vec<NewToken>, pskc::PskcError> {
    Ok(pskc::read(reader, opening, limits)?
        .into_iter()
        .map(new_token)
        .collect())
}

/// Sends `tokens` in batches under one import and commits it; the
/// command's output.
pub async fn import(
    client: &Client,
    tokens: Vec<NewToken>,
    max_frame: u32,
) -> anyhow::Result<Value> {
    let serials: Vec<String> = tokens.iter().map(|t| t.info.serial.to_string()).collect();
    let progress = bar(serials.len() as u64, "importing");
    let imported = import_tokens(client, tokens, max_frame, |sent| progress.inc(sent)).await;
    let imported = match imported {
        Ok(imported) => imported,
        Err(error) => {
            progress.abandon();
            return Err(error.into());
        }
    };
    progress.finish_and_clear();
    Ok(json!({ "imported": imported, "serials": serials }))
}

/// Retires the tokens from `from` to `to`, a page per request, with a
/// spinner; `{"retired": N}`.
pub async fn retire(client: &Client, from: Serial, to: Serial) -> anyhow::Result<Value> {
    let progress =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    progress.set_message("retiring");
    let mut stream = client.stream().await?;
    let (mut after, mut retired) = (None, 0);
    loop {
        let operation = Operation::RetireTokens {
            from: from.clone(),
            to: to.clone(),
            after,
        };
        match stream.call(operation).await? {
            Reply::TokensRetired { retired: now, last } => {
                retired += now;
                progress.inc(now);
                match last {
                    Some(last) => after = Some(last),
                    None => break,
                }
            }
            Reply::Error { code, message, .. } => {
                progress.abandon();
                bail!("{code:?}: {message}")
            }
            other => bail!("unexpected reply {other:?}"),
        }
    }
    progress.finish_and_clear();
    stream.finish().await;
    Ok(json!({ "retired": retired }))
}

/// A progress bar on stderr (hidden when it is not a terminal).
fn bar(length: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(length),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} {eta}")
    {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}
