//! Per-link TCP proxies the harness runs in-process. Every link of the system under
//! test (server to server, worker to server, client to server, server to an http
//! worker) goes through one of these, so a partition is a state change here and needs
//! no root (the etcd peer-proxy model).
//!
//! A proxy carries one direction of *connections* (A dials B), and each direction of
//! *bytes* on them can be controlled separately: `forward` is what the dialer sends,
//! `backward` what comes back. That is what makes a one-way cut possible over
//! request/response protocols: "A cannot receive" blackholes B's answers as well as
//! B's own requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What happens to the bytes of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "ms")]
pub enum Flow {
    Pass,
    /// Nothing is forwarded: the bytes are held (TCP buffers fill, the sender stalls)
    /// and delivered if the link heals while the connection is still open, as TCP
    /// retransmission would after a real partition.
    Blackhole,
    /// Every chunk is delivered this many milliseconds after it was read, in order.
    Delay(u64),
}

/// The whole state of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// New connections are refused (the listening port is closed) and live ones cut.
    pub refuse: bool,
    pub forward: Flow,
    pub backward: Flow,
}

impl LinkState {
    pub const PASS: Self = Self {
        refuse: false,
        forward: Flow::Pass,
        backward: Flow::Pass,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("proxy {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The link's state, and overrides for connections from particular sources (a
/// link several servers dial, such as an http worker's endpoint, can then be cut
/// for one server only).
#[derive(Debug, Clone, PartialEq, Eq)]
struct States {
    default: LinkState,
    by_source: BTreeMap<u64, LinkState>,
}

impl States {
    fn of(&self, source: Option<u64>) -> LinkState {
        source
            .and_then(|s| self.by_source.get(&s))
            .copied()
            .unwrap_or(self.default)
    }
}

/// Tells which source (a node id) dialed a connection, from the dialer's address.
pub type SourceResolver = Arc<dyn Fn(SocketAddr) -> Option<u64> + Send + Sync>;

/// One link's proxy: listens on `addr`, dials `target`.
pub struct Proxy {
    pub name: String,
    pub addr: SocketAddr,
    pub target: SocketAddr,
    state: watch::Sender<States>,
    resolver: Mutex<Option<SourceResolver>>,
    /// Cancelled to cut every live connection; replaced by a fresh token after.
    cut: Mutex<CancellationToken>,
    accept: Mutex<Option<JoinHandle<()>>>,
    shutdown: CancellationToken,
}

impl Proxy {
    /// Binds `addr` (a free loopback port) and starts forwarding to `target`.
    pub async fn start(
        name: impl Into<String>,
        addr: SocketAddr,
        target: SocketAddr,
    ) -> Result<Arc<Self>, ProxyError> {
        let name = name.into();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
        let (state, _) = watch::channel(States {
            default: LinkState::PASS,
            by_source: BTreeMap::new(),
        });
        let proxy = Arc::new(Self {
            name,
            addr,
            target,
            state,
            resolver: Mutex::new(None),
            cut: Mutex::new(CancellationToken::new()),
            accept: Mutex::new(None),
            shutdown: CancellationToken::new(),
        });
        let task = tokio::spawn(accept_loop(proxy.clone(), listener));
        *proxy.accept.lock().expect("proxy lock") = Some(task);
        Ok(proxy)
    }

    pub fn state(&self) -> LinkState {
        self.state.borrow().default
    }

    /// Identifies each new connection's source with `resolver`, for
    /// [`Proxy::set_source`].
    pub fn set_resolver(&self, resolver: SourceResolver) {
        *self.resolver.lock().expect("proxy lock") = Some(resolver);
    }

    /// Overrides the state for connections from `source` (`None`: back to the
    /// link's state). Refusing a source cuts its live connections and closes new
    /// ones at once (the port stays open for the others).
    pub fn set_source(&self, source: u64, state: Option<LinkState>) {
        self.state.send_modify(|s| match state {
            Some(st) => {
                s.by_source.insert(source, st);
            }
            None => {
                s.by_source.remove(&source);
            }
        });
    }

    /// Sets the link's state. Refusing closes the port and cuts live connections;
    /// leaving a refusal binds the port again.
    pub async fn set(self: &Arc<Self>, new: LinkState) {
        let old = self.state();
        if new == old {
            return;
        }
        if new.refuse && !old.refuse {
            if let Some(task) = self.accept.lock().expect("proxy lock").take() {
                task.abort();
            }
            self.cut_live();
        }
        self.state.send_modify(|s| s.default = new);
        if !new.refuse && old.refuse {
            // The port was closed: bind it again. SO_REUSEADDR (set by tokio) lets
            // this succeed at once; retry briefly in case the abort is still settling.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => {
                        let task = tokio::spawn(accept_loop(self.clone(), listener));
                        *self.accept.lock().expect("proxy lock") = Some(task);
                        break;
                    }
                    Err(e) if Instant::now() > deadline => {
                        eprintln!("jepsen-lite: proxy {} cannot listen again: {e}", self.name);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }

    /// Passes everything again, per-source overrides included.
    pub async fn pass(self: &Arc<Self>) {
        self.set(LinkState::PASS).await;
        self.state.send_modify(|s| s.by_source.clear());
    }

    /// Refuse new connections and cut the live ones.
    pub async fn refuse(self: &Arc<Self>) {
        self.set(LinkState {
            refuse: true,
            ..LinkState::PASS
        })
        .await;
    }

    /// Forward nothing in either direction.
    pub async fn blackhole(self: &Arc<Self>) {
        self.set(LinkState {
            refuse: false,
            forward: Flow::Blackhole,
            backward: Flow::Blackhole,
        })
        .await;
    }

    /// Delay both directions by `ms`.
    pub async fn delay(self: &Arc<Self>, ms: u64) {
        self.set(LinkState {
            refuse: false,
            forward: Flow::Delay(ms),
            backward: Flow::Delay(ms),
        })
        .await;
    }

    fn cut_live(&self) {
        let mut g = self.cut.lock().expect("proxy lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Stops accepting and cuts every connection (end of run).
    pub fn close(&self) {
        self.shutdown.cancel();
        if let Some(task) = self.accept.lock().expect("proxy lock").take() {
            task.abort();
        }
        self.cut_live();
    }
}

async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = proxy.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((inbound, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let cut = proxy.cut.lock().expect("proxy lock").clone();
        let rx = proxy.state.subscribe();
        let target = proxy.target;
        let shutdown = proxy.shutdown.clone();
        let resolver = proxy.resolver.lock().expect("proxy lock").clone();
        tokio::spawn(async move {
            let source = match (resolver, inbound.peer_addr()) {
                (Some(r), Ok(peer)) => tokio::task::spawn_blocking(move || r(peer))
                    .await
                    .ok()
                    .flatten(),
                _ => None,
            };
            tokio::select! {
                _ = cut.cancelled() => {}
                _ = shutdown.cancelled() => {}
                _ = refused(rx.clone(), source) => {}
                _ = serve(inbound, target, rx, source) => {}
            }
        });
    }
}

/// Returns once connections from `source` are refused.
async fn refused(mut rx: watch::Receiver<States>, source: Option<u64>) {
    loop {
        if rx.borrow_and_update().of(source).refuse {
            return;
        }
        if rx.changed().await.is_err() {
            // The proxy is gone; the shutdown token ends the connection.
            std::future::pending::<()>().await;
        }
    }
}

async fn serve(
    inbound: TcpStream,
    target: SocketAddr,
    rx: watch::Receiver<States>,
    source: Option<u64>,
) {
    let _ = inbound.set_nodelay(true);
    let outbound =
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            // The target is down: close at once, as a refused connection would.
            _ => return,
        };
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let fwd = pump(in_r, out_w, rx.clone(), source, true);
    let back = pump(out_r, in_w, rx, source, false);
    tokio::pin!(back);
    tokio::select! {
        // The dialer closed. Its last bytes went on to the target, which may still
        // be working on them (a held request delivered after a heal, say): keep the
        // target's side open (no FIN yet, as if the FIN were lost) for a moment so it
        // handles them, then cut the connection.
        _keep_open = fwd => {
            let _ = tokio::time::timeout(Duration::from_secs(3), &mut back).await;
        }
        _ = &mut back => {}
    }
}

/// Copies one direction, applying that direction's flow to every chunk.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<States>,
    source: Option<u64>,
    forward: bool,
) -> Option<tokio::net::tcp::OwnedWriteHalf> {
    let (tx, mut queue) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    // Forward, the write half is handed back still open when the dialer closed
    // (dropping it would send the FIN at once); backward, the FIN goes on.
    let writer = async move {
        while let Some((at, bytes)) = queue.recv().await {
            tokio::time::sleep_until(at).await;
            if w.write_all(&bytes).await.is_err() {
                return None;
            }
        }
        if forward {
            Some(w)
        } else {
            let _ = w.shutdown().await;
            None
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let at = loop {
                let state = rx.borrow_and_update().of(source);
                let flow = if forward {
                    state.forward
                } else {
                    state.backward
                };
                match flow {
                    Flow::Pass => break Instant::now(),
                    Flow::Delay(ms) => break Instant::now() + Duration::from_millis(ms),
                    Flow::Blackhole => {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
            };
            if tx.send((at, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    // The writer ends when the reader has ended and the queue is drained.
    tokio::join!(reader, writer).1
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn free() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(wait, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn passes_blackholes_delays_and_refuses() {
        let echo = echo_server().await;
        let p = Proxy::start("t", free(), echo).await.unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(
            roundtrip(&mut s, b"hi", Duration::from_secs(2)).await,
            Some(b"hi".to_vec())
        );

        // Blackhole: nothing comes back; after healing the held bytes arrive.
        p.blackhole().await;
        s.write_all(b"lost?").await.unwrap();
        let mut buf = [0u8; 5];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf))
                .await
                .is_err(),
            "a blackholed link forwarded bytes"
        );
        p.pass().await;
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .expect("held bytes delivered after heal")
            .unwrap();
        assert_eq!(&buf, b"lost?");

        // Delay: a round trip takes at least twice the delay.
        p.delay(100).await;
        let t = Instant::now();
        assert!(roundtrip(&mut s, b"slow", Duration::from_secs(2))
            .await
            .is_some());
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );

        // Refuse: the live connection is cut and new ones are refused.
        p.refuse().await;
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .expect("the cut connection ends");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert!(
            TcpStream::connect(p.addr).await.is_err(),
            "connection accepted"
        );

        p.pass().await;
        let mut s2 = TcpStream::connect(p.addr).await.unwrap();
        assert_eq!(
            roundtrip(&mut s2, b"back", Duration::from_secs(2)).await,
            Some(b"back".to_vec())
        );
        p.close();
    }

    #[tokio::test]
    async fn one_way_cut_holds_only_one_direction() {
        let echo = echo_server().await;
        let p = Proxy::start("t", free(), echo).await.unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        p.set(LinkState {
            refuse: false,
            forward: Flow::Pass,
            backward: Flow::Blackhole,
        })
        .await;
        assert_eq!(
            roundtrip(&mut s, b"x", Duration::from_millis(300)).await,
            None
        );
        p.pass().await;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"x");
        p.close();
    }
}
