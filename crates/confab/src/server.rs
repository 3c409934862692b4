//! Running a node: serve until a shutdown signal, then close every
//! connection with 1001, drain the sequencer and close the store.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::http;
use crate::node::Node;

/// Starts a node on `listener`, says so once its store and broker are
/// open, and serves until `signal` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let node = Node::start(settings).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        store = %crate::store::redact(&node.settings.store),
        broker = %crate::store::redact(&node.settings.broker),
        direct_writes = node.direct_writes,
        "confab listening"
    );
    serve(listener, node, signal).await
}

/// Serves `node` on `listener` until `signal` resolves, then shuts down
/// within the node's `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = http::router(node.clone());
    let token = node.shutdown.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        token.cancel();
    });
    let deadline = node.settings.shutdown_timeout;
    let server = tokio::spawn(accept(
        listener,
        app,
        node.settings.header_timeout,
        node.shutdown.clone(),
    ));
    let cancelled = node.shutdown.clone();
    cancelled.cancelled().await;
    // The hub closes every session with 1001 (`Node::start` ties it to the
    // token); wait for them and for plain HTTP requests, each within the
    // deadline.
    node.tracker.close();
    if tokio::time::timeout(deadline, node.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(?deadline, "connections still open at the shutdown deadline");
    }
    let requests = server.await?;
    if tokio::time::timeout(deadline, requests.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open at the shutdown deadline");
    }
    node.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections until `stop`, serving each over HTTP/1 with
/// upgrades. Returns the tracker of the connections still being served,
/// each already told to finish its request and close.
///
/// Served here rather than by `axum::serve` so that an upgraded socket is
/// the plain `TcpStream` again ([`crate::ws`]); HTTP/2 is not offered
/// (browsers speak it only over TLS, which a proxy in front terminates).
async fn accept(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    stop: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    let mut http = http1::Builder::new();
    // A client has this long to send its request head (slowloris).
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => {
                tracker.close();
                return tracker;
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // Out of file descriptors, most likely: back off
                    // rather than spin, and keep serving the open ones.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Chat frames are small and latency matters: never let Nagle's
        // algorithm hold one back waiting for an ACK.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
}
