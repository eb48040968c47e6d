//! A round-robin TCP balancer in front of several servers: the clients' one address
//! (they take one URL). Each new connection goes to the next backend in turn; a
//! connection stays on its backend until one side closes it, as behind a layer-4
//! load balancer, so only connections that end move.
//!
//! Boundary: bytes and addresses; forwarding is the proxy's (`proxy::pipe`, with
//! nothing cut or frozen).

use super::*;

pub(crate) struct Balancer {
    pub(crate) addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections handed to each backend so far.
    opened: Arc<Mutex<BTreeMap<SocketAddr, u64>>>,
    /// Kept so that the pipes' control never closes: nothing is ever cut here.
    _control: watch::Sender<Control>,
    _accept: AbortOnDrop,
}

impl Balancer {
    pub(crate) async fn start(first: SocketAddr) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(Mutex::new(vec![first]));
        let opened = Arc::new(Mutex::new(BTreeMap::new()));
        let (control, control_rx) = watch::channel(Control::default());
        // Not read here: the balancer counts connections, not bytes.
        let sent = Arc::new(AtomicU64::new(0));
        let accept = {
            let (backends, opened) = (backends.clone(), opened.clone());
            tokio::spawn(async move {
                let mut next = 0usize;
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let to = {
                        let live = backends.lock().unwrap();
                        live[next % live.len()]
                    };
                    *opened.lock().unwrap().entry(to).or_insert(0) += 1;
                    let id = next as u64;
                    next += 1;
                    tokio::spawn(pipe(id, socket, to, control_rx.clone(), sent.clone()));
                }
            })
        };
        Ok(Balancer {
            addr,
            backends,
            opened,
            _control: control,
            _accept: AbortOnDrop(accept),
        })
    }

    /// New connections go to `backend` too, in turn with the others.
    pub(crate) fn add(&self, backend: SocketAddr) {
        self.backends.lock().unwrap().push(backend);
    }

    /// Connections handed to `backend` so far.
    pub(crate) fn opened_to(&self, backend: SocketAddr) -> u64 {
        self.opened
            .lock()
            .unwrap()
            .get(&backend)
            .copied()
            .unwrap_or(0)
    }
}
