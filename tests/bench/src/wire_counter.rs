//! A TCP relay in front of a server that counts the bytes it carries each way, so a
//! workload can weigh what a reconnect costs on the wire whatever the protocol.
//! Knows nothing above TCP (and nothing of configwatch's relays, which are servers
//! under test: `peer/configwatch_relay.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

/// A TCP relay in front of a server that counts the bytes it carries each way
/// (everything on the wire above TCP: HTTP/2 frames, headers, gRPC messages).
/// When either side closes, the relay closes the other.
pub struct WireCounter {
    pub addr: SocketAddr,
    /// Server to client.
    down: Arc<AtomicU64>,
    /// Client to server.
    up: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl WireCounter {
    pub async fn start(target: SocketAddr) -> Result<WireCounter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicU64::new(0));
        let up = Arc::new(AtomicU64::new(0));
        let (d, u) = (down.clone(), up.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let (down, up) = (d.clone(), u.clone());
                tokio::spawn(async move {
                    // The server is down: close the client's connection at once.
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(sr, cw, &down) => {}
                        _ = pump(cr, sw, &up) => {}
                    }
                });
            }
        });
        Ok(WireCounter {
            addr,
            down,
            up,
            task,
        })
    }

    /// (server to client, client to server) so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.down.load(Ordering::Acquire),
            self.up.load(Ordering::Acquire),
        )
    }
}

impl Drop for WireCounter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
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
        count.fetch_add(n as u64, Ordering::AcqRel);
        let mut off = 0;
        while off < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[off..n]) {
                Ok(w) => off += w,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}
