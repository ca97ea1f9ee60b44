//! The exporter's HTTP server: hyper's HTTP/1 server on one tokio thread, with fixed bounds.
//!
//! hyper is the HTTP implementation the Rust service ecosystem builds on (axum, tonic, reqwest):
//! it never buffers a request body it is not asked to read, bounds the request head it parses,
//! and times out slow heads. What hyper leaves to the application is done here: a cap on open
//! connections (the oldest connection not serving a request makes room for a new one, so
//! idle sockets cannot lock a scraper out), an idle keep-alive timeout, a timeout for a
//! connection that never completes its first request, and a refusal of request bodies (a
//! scrape sends none). Memory and threads stay fixed whatever clients do: one runtime thread,
//! one blocking thread for the sysfs reads of a scrape, at most [`Limits::max_connections`]
//! sockets with at most [`Limits::head_bytes`] of buffer each.

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The fixed bounds of the server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most. At the cap the oldest connection that has not sent a request
    /// (else the longest idle one) is closed to make room; when all are serving, the new one is.
    pub max_connections: usize,
    /// Bytes of request head (request line and headers) buffered at most; more gets 431.
    pub head_bytes: usize,
    /// Header lines at most.
    pub headers: usize,
    /// A declared request body larger than this is refused (413, connection closed) unread.
    pub body_bytes: u64,
    /// Time to receive a complete request head after connecting (slowloris).
    pub header_timeout: Duration,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Time to serve one request.
    pub request_timeout: Duration,
}

/// The exporter's bounds. Prometheus uses one keep-alive connection per target and sends
/// heads of a few hundred bytes.
pub const LIMITS: Limits = Limits {
    max_connections: 64,
    head_bytes: 16 * 1024,
    headers: 64,
    body_bytes: 1024,
    header_timeout: Duration::from_secs(5),
    idle_timeout: Duration::from_secs(30),
    request_timeout: Duration::from_secs(30),
};

/// What the server answers; called on the blocking thread, one call at a time.
pub type Render = dyn Fn(&str) -> Reply + Send + Sync;

/// A response of the application: status, content type, body.
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    /// A plain-text reply.
    pub fn text(status: StatusCode, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connected, no request head complete yet.
    New,
    /// Serving a request.
    Busy,
    /// Between requests of a keep-alive connection.
    Idle,
}

struct Conn {
    phase: Phase,
    since: Instant,
    /// Dropping it closes the connection.
    _close: oneshot::Sender<()>,
}

/// The open connections, their phase and how to close them.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl Table {
    fn set(&mut self, id: u64, phase: Phase) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.phase = phase;
            c.since = Instant::now();
        }
    }

    /// Closes the connections past their phase's deadline.
    fn expire(&mut self, limits: &Limits, now: Instant) {
        self.conns.retain(|_, c| {
            let limit = match c.phase {
                Phase::New => limits.header_timeout,
                Phase::Busy => limits.request_timeout,
                Phase::Idle => limits.idle_timeout,
            };
            now.duration_since(c.since) < limit
        });
    }

    /// Makes room for one more connection; false when every connection is serving a request.
    fn make_room(&mut self, limits: &Limits) -> bool {
        if self.conns.len() < limits.max_connections {
            return true;
        }
        // A connection that never sent a request goes first, so a scraper's keep-alive
        // connection outlives a flood of idle sockets.
        let oldest_waiting = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Busy)
            .min_by_key(|(_, c)| (c.phase != Phase::New, c.since))
            .map(|(id, _)| *id);
        match oldest_waiting {
            Some(id) => {
                self.conns.remove(&id);
                true
            }
            None => false,
        }
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

fn response(reply: Reply, close: bool) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = reply.status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if close {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Answers one request: bodies and methods refused before the application sees them.
async fn handle(
    req: Request<Incoming>,
    limits: Limits,
    render: Arc<Render>,
) -> Response<Full<Bytes>> {
    let declared = req.body().size_hint();
    // A chunked body has no upper bound: refused like an oversized one, never read.
    if declared.upper().map_or(true, |n| n > limits.body_bytes) {
        let why = format!(
            "request bodies over {} bytes are refused; GET /metrics needs none\n",
            limits.body_bytes
        );
        return response(Reply::text(StatusCode::PAYLOAD_TOO_LARGE, &why), true);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let reply = Reply::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        return response(reply, declared.upper() != Some(0));
    }
    let path = req.uri().path().to_string();
    let reply = tokio::task::spawn_blocking(move || render(&path))
        .await
        .unwrap_or_else(|_| Reply::text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"));
    response(reply, false)
}

fn http1(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.head_bytes)
        .max_headers(limits.headers)
        .keep_alive(true);
    b
}

/// Serves one accepted connection until it ends or the table drops it.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    table: &Arc<Mutex<Table>>,
    limits: Limits,
    render: &Arc<Render>,
) {
    let (close, closed) = oneshot::channel();
    let id = {
        let mut t = lock(table);
        let id = t.next_id;
        t.next_id += 1;
        t.conns.insert(
            id,
            Conn {
                phase: Phase::New,
                since: Instant::now(),
                _close: close,
            },
        );
        id
    };
    let table = Arc::clone(table);
    let render = Arc::clone(render);
    tokio::spawn(async move {
        let service = {
            let table = Arc::clone(&table);
            hyper::service::service_fn(move |req| {
                let table = Arc::clone(&table);
                let render = Arc::clone(&render);
                async move {
                    lock(&table).set(id, Phase::Busy);
                    let r = handle(req, limits, render).await;
                    lock(&table).set(id, Phase::Idle);
                    Ok::<_, Infallible>(r)
                }
            })
        };
        let conn = http1(&limits).serve_connection(TokioIo::new(stream), service);
        // Protocol errors (malformed requests, resets) end the connection; hyper has already
        // answered what it could (400, 431), and they are the client's business.
        tokio::select! {
            _ = conn => {}
            _ = closed => {}
        }
        lock(&table).conns.remove(&id);
    });
}

/// Accepts and serves connections on `listener` until `stop` resolves.
pub fn serve(
    listener: std::net::TcpListener,
    limits: Limits,
    render: Arc<Render>,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(1)
        .build()?;
    listener.set_nonblocking(true)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let table = Arc::new(Mutex::new(Table::default()));
        let mut sweep = tokio::time::interval(Duration::from_millis(250));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = sweep.tick() => lock(&table).expire(&limits, Instant::now()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if lock(&table).make_room(&limits) {
                            spawn_connection(stream, &table, limits, &render);
                            // Let the new connection read its request before the next accept:
                            // a client that sends one at once is serving (not evictable)
                            // before a flood of idle connects can push it out.
                            tokio::task::yield_now().await;
                        }
                        // else: dropped, so closed: every connection is serving a request.
                    }
                    // Out of file descriptors or a connection reset before accept: try again
                    // shortly rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                },
            }
        }
        Ok::<_, std::io::Error>(())
    })?;
    // A scrape still reading sysfs is not waited for long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
