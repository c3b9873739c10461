//! `GET /metrics`: the Prometheus text rendering, over a minimal HTTP/1.1
//! responder (one request per connection), so that the exporter needs no
//! HTTP framework.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The most request bytes read before answering.
const MAX_REQUEST: usize = 4096;

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) async fn serve(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    mut stopping: watch::Receiver<bool>,
) {
    // The exporter keeps every histogram sample until it is folded into
    // the buckets, which a scrape or an upkeep does: without this, a daemon
    // nobody scrapes holds 8 bytes per request forever.
    let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = upkeep.tick() => {
                if let Some(handle) = &handle {
                    handle.run_upkeep();
                }
                continue;
            }
            _ = stopping.changed() => return,
        };
        let Ok((mut socket, _)) = accepted else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut request = vec![0u8; MAX_REQUEST];
            let read =
                tokio::time::timeout(Duration::from_secs(5), socket.read(&mut request)).await;
            let Ok(Ok(n)) = read else { return };
            let head = String::from_utf8_lossy(request.get(..n).unwrap_or(&[]));
            let (status, body) = match (head.starts_with("GET /metrics "), &handle) {
                (true, Some(handle)) => ("200 OK", handle.render()),
                (true, None) => (
                    "503 Service Unavailable",
                    "metrics recorder not installed\n".to_owned(),
                ),
                (false, _) => ("404 Not Found", "try /metrics\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
