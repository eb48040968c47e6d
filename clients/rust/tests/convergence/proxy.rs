//! The proxy between the clients and the server: cuts connections (FIN or RST),
//! freezes them silently, or plays a hung server.

use super::*;

/// What the proxy does to the connections it holds, by connection number: those
/// below `cut_below` are closed; those below `freeze_below`, and from
/// `blackhole_from` on, forward nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Control {
    pub(crate) cut_below: u64,
    pub(crate) reset: bool,
    pub(crate) freeze_below: u64,
    pub(crate) blackhole_from: Option<u64>,
}

impl Control {
    pub(crate) fn frozen(&self, id: u64) -> bool {
        id < self.freeze_below || self.blackhole_from.is_some_and(|from| id >= from)
    }
}

/// A TCP proxy on 127.0.0.1 port 0 in front of the current server: the clients'
/// one address across restarts, and the test's way to break connections.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) upstream: watch::Sender<SocketAddr>,
    pub(crate) control: watch::Sender<Control>,
    pub(crate) opened: Arc<AtomicU64>,
    /// Bytes the server sent to the clients through the proxy.
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) _accept: AbortOnDrop,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (upstream, upstream_rx) = watch::channel(upstream);
        let (control, control_rx) = watch::channel(Control::default());
        let opened = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let accept = {
            let (opened, sent) = (opened.clone(), sent.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let id = opened.fetch_add(1, Ordering::SeqCst);
                    let to = *upstream_rx.borrow();
                    tokio::spawn(pipe(id, socket, to, control_rx.clone(), sent.clone()));
                }
            })
        };
        Ok(Proxy {
            addr,
            upstream,
            control,
            opened,
            sent,
            _accept: AbortOnDrop(accept),
        })
    }

    /// New connections go to `addr`.
    pub(crate) fn retarget(&self, addr: SocketAddr) {
        self.upstream.send_replace(addr);
    }

    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Bytes the server has sent to the clients so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Closes every connection open now.
    pub(crate) fn cut(&self, reset: bool) {
        self.cut_below(self.opened(), reset);
    }

    pub(crate) fn cut_below(&self, below: u64, reset: bool) {
        self.control.send_modify(|c| {
            c.cut_below = c.cut_below.max(below);
            c.reset = reset;
        });
    }

    /// Freezes every connection open now and, with `blackhole`, every new one until
    /// [`end_blackhole`](Self::end_blackhole).
    pub(crate) fn freeze(&self, blackhole: bool) {
        let below = self.opened();
        self.control.send_modify(|c| {
            c.freeze_below = c.freeze_below.max(below);
            c.blackhole_from = blackhole.then_some(below);
        });
    }

    /// New connections work again (the frozen ones stay frozen); returns the first
    /// number not frozen.
    pub(crate) fn end_blackhole(&self) -> u64 {
        let below = self.opened();
        self.control.send_modify(|c| {
            c.freeze_below = c.freeze_below.max(below);
            c.blackhole_from = None;
        });
        below
    }
}

/// Carries one connection; `sent` counts the bytes the server sends the client.
pub(crate) async fn pipe(
    id: u64,
    mut client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    sent: Arc<AtomicU64>,
) {
    // A server that is down: the client sees its connection closed at once.
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let (up, down) = (control.clone(), control.clone());
        tokio::select! {
            c = control.wait_for(|c| c.cut_below > id) => c.map(|c| c.reset).unwrap_or(false),
            _ = forward(id, client_read, server_write, up, None) => false,
            _ = forward(id, server_read, client_write, down, Some(&sent)) => false,
        }
    };
    if reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies until EOF or an error, holding still while the connection is frozen;
/// adds what it delivered to `counted`.
pub(crate) async fn forward(
    id: u64,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut control: watch::Receiver<Control>,
    counted: Option<&AtomicU64>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if control.wait_for(|c| !c.frozen(id)).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if control.wait_for(|c| !c.frozen(id)).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(counted) = counted {
            counted.fetch_add(n as u64, Ordering::SeqCst);
        }
    }
}
