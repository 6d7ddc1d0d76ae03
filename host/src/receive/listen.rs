//! The receiver's accept loop: hyper's HTTP/1 connections with the limits
//! any client meets before a signature is checked. `axum::serve` exposes
//! neither hyper's header-read timeout nor a connection limit, so the loop
//! is here.
//!
//! - `server.max_connections`: a connection beyond the limit is closed as
//!   soon as it is accepted (the kernel's backlog stays empty, so a slot
//!   freed is at once open to the next client, and descriptors stay
//!   bounded).
//! - `server.header_read_timeout_secs`: hyper closes a connection whose
//!   request headers are not complete in time, idle keep-alive time
//!   included.
//!
//! Both are logged with the peer address. Request and request-body
//! timeouts are layers of the application (`receive::app`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::config::ServerConfig;

/// The connection-level settings of `[server]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl ConnectionLimits {
    pub(crate) fn new(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            max_connections: server.max_connections,
        }
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop
/// accepting, let each connection finish the request in progress (an idle
/// one closes at once) and return when every connection has ended.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max = limits.max_connections;
    // A connection holds a permit until it ends.
    let permits = Arc::new(Semaphore::new(max));
    let (closing_tx, closing) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut refusals = Refusals::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            refusals.refused(peer, max);
            continue;
        };
        tokio::spawn(connection(
            http.clone(),
            stream,
            peer,
            app.clone(),
            closing.clone(),
            limits,
            permit,
        ));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every permit back means every connection has ended. The semaphore is
    // never closed, so this only returns then.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Serve one connection until it ends, then give its permit back.
async fn connection(
    http: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut closing: watch::Receiver<bool>,
    limits: ConnectionLimits,
    _permit: OwnedSemaphorePermit,
) {
    let service = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    let mut told_to_close = false;
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break ended,
            _ = closing.wait_for(|closing| *closing), if !told_to_close => {
                told_to_close = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    match ended {
        Ok(()) => {}
        Err(error) if error.is_timeout() => warn!(
            %peer,
            "closed a connection: no complete request headers within {} s (server.header_read_timeout_secs)",
            limits.header_read_timeout.as_secs()
        ),
        Err(error) => debug!(%peer, %error, "connection ended with an error"),
    }
}

/// An error from `accept`: one client's failed handshake is skipped; any
/// other (out of file descriptors) pauses accepting for a second rather
/// than spinning, as `axum::serve` does.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    warn!(%error, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Connections refused at the limit are logged at most once a second, with
/// the peer of the one that triggered the line and how many were refused
/// since the previous line, so a flood of connections cannot flood the log.
#[derive(Debug, Default)]
struct Refusals {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn refused(&mut self, peer: SocketAddr, limit: usize) {
        self.unlogged += 1;
        if self
            .last_line
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        warn!(
            %peer,
            refused = self.unlogged,
            "refused a connection: {limit} connections are open (server.max_connections)"
        );
        self.last_line = Some(Instant::now());
        self.unlogged = 0;
    }
}
