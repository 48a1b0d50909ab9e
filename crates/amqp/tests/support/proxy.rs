//! [`TcpProxy`]: a loopback proxy in front of the broker, to simulate network trouble.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------
// A TCP proxy to simulate outages without touching the shared broker
// ---------------------------------------------------------------------------------------

/// A loopback TCP proxy in front of the broker, to simulate network trouble for one client
/// without disturbing the (shared) broker: [`TcpProxy::freeze`] stops every byte in both
/// directions (a broker that hangs, a network partition), [`TcpProxy::sever`] drops every
/// proxied connection (a broker restart as the client sees it). Stopped on drop.
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    generation: tokio::sync::watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards each connection to `target`
    /// (`127.0.0.1:5672` for the test broker).
    ///
    /// # Panics
    /// When it cannot listen.
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let target = target.to_owned();
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let frozen = frozen.clone();
            let generation = generation.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let client = Arc::new(client);
                    let server = Arc::new(server);
                    for (from, to) in [(Arc::clone(&client), Arc::clone(&server)), (server, client)]
                    {
                        tokio::spawn(relay(from, to, frozen.subscribe(), generation.subscribe()));
                    }
                }
            })
        };
        TcpProxy {
            addr,
            frozen,
            generation,
            accepted,
            accept,
        }
    }

    /// Starts a proxy in front of the test broker's plain AMQP port.
    pub async fn to_broker() -> TcpProxy {
        TcpProxy::start("127.0.0.1:5672").await
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// An `amqp://` URL through the proxy to the default vhost.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port())
    }

    /// How many client connections the proxy has accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops forwarding bytes (connections stay open, nothing arrives either way).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards bytes again, including what was held back.
    pub fn resume(&self) {
        self.frozen.send_replace(false);
    }

    /// Drops every connection proxied so far; new connections are still accepted.
    pub fn sever(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Copies `from` to `to` until either side closes or the proxy severs its connections,
/// holding bytes back while the proxy is frozen. Uses the `try_read`/`try_write` API, which
/// needs only tokio's `net` feature.
async fn relay(
    from: Arc<tokio::net::TcpStream>,
    to: Arc<tokio::net::TcpStream>,
    mut frozen: tokio::sync::watch::Receiver<bool>,
    mut generation: tokio::sync::watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let severed = async move {
        let _ = generation.changed().await;
    };
    let copy = async move {
        loop {
            if from.readable().await.is_err() {
                return;
            }
            let n = match from.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            };
            if frozen.wait_for(|frozen| !*frozen).await.is_err() {
                return;
            }
            let mut sent = 0;
            while sent < n {
                if to.writable().await.is_err() {
                    return;
                }
                match to.try_write(&buf[sent..n]) {
                    Ok(m) => sent += m,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        }
    };
    tokio::select! {
        () = severed => {}
        () = copy => {}
    }
    // Both halves are dropped with their tasks; the sockets close when the last Arc goes.
}
