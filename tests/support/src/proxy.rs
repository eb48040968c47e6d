//! A TCP proxy on 127.0.0.1 port 0 that a test can cut and restore: while cut, it
//! resets every connection it carries and every new one (a peer that is down, not
//! one that hangs); restored, it forwards new connections again. Put between the
//! server and moto it plays an AWS outage without stopping moto, which keeps its
//! state only while its process lives.
//!
//! Boundary: plain TCP on the loopback; knows nothing of what flows through it.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable proxy to one upstream address; stops (and closes what it carries)
/// when dropped.
pub struct CutProxy {
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CutProxy {
    /// A proxy to `upstream`, forwarding.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().expect("the proxy's address");
        let (cut, cut_rx) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(carry(socket, upstream, cut_rx.clone()));
            }
        });
        CutProxy { addr, cut, accept }
    }

    /// A proxy to the `http://HOST:PORT` endpoint `url` (moto's).
    pub async fn to_endpoint(url: &str) -> CutProxy {
        let upstream = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("endpoint {url:?} is not http://ADDR: {e}"));
        CutProxy::start(upstream).await
    }

    /// The proxy as an `http://` endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every connection now and refuses (resets) new ones until `restore`.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// Forwards one connection until either side closes it or the proxy is cut, which
/// resets both sides.
async fn carry(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow_and_update() {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_cut = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => false,
        _ = cut.wait_for(|c| *c) => true,
    };
    if was_cut {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}
