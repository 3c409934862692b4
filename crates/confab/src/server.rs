//! Running a node: serve until a shutdown signal, then close every
//! connection with 1001, drain the sequencer and close the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http;
use crate::node::Node;

/// Starts a node on `listener` and serves until `signal` resolves.
pub async fn run(listener: TcpListener, settings: Settings, signal: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let node = Node::start(settings).await?;
    serve(listener, node, signal).await
}

/// Serves `node` on `listener` until `signal` resolves, then shuts down
/// within the node's `shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = http::router(node.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let token = node.shutdown.clone();
    let stop = async move {
        signal.await;
        tracing::info!("shutting down");
        token.cancel();
    };
    let deadline = node.settings.shutdown_timeout;
    let server = axum::serve(listener, app).with_graceful_shutdown(stop);
    let cancelled = node.shutdown.clone();
    let served = tokio::spawn(async move { server.await });
    cancelled.cancelled().await;
    // Sessions see the same token and close with 1001; wait for them and
    // for plain HTTP requests, each within the deadline.
    node.tracker.close();
    if tokio::time::timeout(deadline, node.tracker.wait()).await.is_err() {
        tracing::warn!(?deadline, "connections still open at the shutdown deadline");
    }
    match tokio::time::timeout(deadline, served).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error"),
        Err(_) => tracing::warn!("HTTP requests still open at the shutdown deadline"),
        _ => {}
    }
    node.close().await;
    tracing::info!("stopped");
    Ok(())
}
