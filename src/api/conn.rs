//! What a call knows of the connection it came on: the peer's address, the
//! connection's share of the reply budget and when its Watch streams end. The server's accept loop makes one per
//! connection and tonic puts it in every request's extensions; handlers read it
//! here, so the API does not depend on the server that carries it.

use tonic::transport::server::TcpConnectInfo;

use super::budget::ConnectionReplies;

/// What a call knows of its connection (in the request's extensions).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    /// The connection's share of the budget of unread reply bytes.
    pub replies: ConnectionReplies,
    /// When the connection's Watch streams end with UNAVAILABLE because it reached
    /// its maximum age (and the grace after it); `None` without a maximum age.
    pub ends_at: Option<tokio::time::Instant>,
}
