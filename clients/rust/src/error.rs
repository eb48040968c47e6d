//! The one error type of the crate, and how the watch loop reacts to each kind.

use std::path::PathBuf;
use std::sync::Arc;

use crate::guard::MassRemoval;

/// What a [`TokenSource`](crate::TokenSource) may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything this crate returns, yields from a change stream, or reports in
/// [`Status::last_error`](crate::Status::last_error).
///
/// Cheap to clone (one fatal error is handed to every change stream), so sources are
/// shared behind `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given something unusable (an empty tenant, a bad URL, ...).
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),

    /// The server ended a call with this gRPC status, or the transport failed (then
    /// the code is `Unavailable`). `PermissionDenied` (a token of another tenant, too
    /// weak a role) and `InvalidArgument` (a bad prefix or key) need the application;
    /// the watch stops on them. See [`Error::is_retryable`].
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message (and for transport failures, the cause).
        message: String,
    },

    /// The token source failed, or returned something that is not a token. The watch
    /// calls it again after a backoff.
    #[error("the token source failed: {0}")]
    TokenSource(Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// A value is not JSON of the requested type.
    #[error("{key}: the value does not decode as the requested type: {source}")]
    Decode {
        /// The key whose value did not decode.
        key: String,
        /// What serde said.
        source: Arc<serde_json::Error>,
    },

    /// The key is a secret: the cache holds its existence and version, never its
    /// value. Read it with [`Client::read_secret`](crate::Client::read_secret).
    #[error("{key} is a secret: its value is never cached; read it with read_secret")]
    Secret {
        /// The secret's key.
        key: String,
    },

    /// The server sent something this client cannot use. The watch reconnects.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// A wait ran out of time.
    #[error("timed out: {0}")]
    Timeout(String),

    /// The client was closed (or every handle to it was dropped).
    #[error("the client is closed")]
    Closed,

    /// The server sent an initial state that would remove every entry the cache holds
    /// (a store that lost its data looks like this), and the client held it back: the
    /// cache keeps serving what it holds, stale, and the watch retries with backoff.
    /// See [`ClientBuilder::allow_mass_removal`](crate::ClientBuilder::allow_mass_removal).
    #[error("{0}")]
    MassRemoval(Box<MassRemoval>),

    /// The on-disk snapshot could not be written. Reads and the watch go on.
    #[error("snapshot {}: {message}", path.display())]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// The gRPC status code, for errors that come from a call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the background watch keeps trying by itself after this error; false
    /// when the application has to change something (a token, a prefix, a key).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { code, .. } => !matches!(
                code,
                tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::OutOfRange
                    | tonic::Code::Unimplemented
            ),
            Error::TokenSource(_) | Error::Protocol(_) | Error::Timeout(_) => true,
            Error::Snapshot { .. } | Error::MassRemoval(_) => true,
            Error::InvalidConfig(_)
            | Error::Decode { .. }
            | Error::Secret { .. }
            | Error::Closed => false,
        }
    }

    pub(crate) fn token_source(message: impl Into<String>) -> Error {
        let e: BoxError = message.into().into();
        Error::TokenSource(Arc::from(e))
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Error {
        Error::Status {
            code: tonic::Code::Unavailable,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Error {
    /// Keeps the code, and appends the transport's causes to the message ("tcp connect
    /// error: Connection refused"), which tonic keeps apart.
    fn from(status: tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        let mut cause = std::error::Error::source(&status);
        let mut depth = 0;
        while let Some(e) = cause {
            let text = e.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            cause = e.source();
            depth += 1;
            if depth >= 8 {
                break;
            }
        }
        Error::Status {
            code: status.code(),
            message,
        }
    }
}

/// What the watch loop does after an attempt ends with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The server failed the watch (unreachable, the stream ended by the transport or
    /// by the server going away, an answer the client cannot use): reconnect to the
    /// next server of the list, with backoff once every one failed in a row.
    MoveOn,
    /// A failure that is not the server's (the token source): reconnect to the same
    /// server after a jittered backoff.
    Backoff,
    /// Ask the token source for a new token and reconnect.
    RefreshToken,
    /// The server cannot read the resume token: drop it, reconnect with the versions.
    DropResumeToken,
    /// Stop: the application must act.
    Fail,
}

/// Decides what follows an attempt that ended with `error`. `sent_resume_token`:
/// the request carried a resume token; `synced`: the stream reached its initial state.
pub(crate) fn next_step(error: &Error, sent_resume_token: bool, synced: bool) -> Next {
    match error.code() {
        Some(tonic::Code::Unauthenticated) => Next::RefreshToken,
        Some(tonic::Code::InvalidArgument) if sent_resume_token && !synced => Next::DropResumeToken,
        _ if !error.is_retryable() => Next::Fail,
        _ if matches!(error, Error::TokenSource(_)) => Next::Backoff,
        _ => Next::MoveOn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code) -> Error {
        Error::Status {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn each_status_has_its_reaction() {
        use tonic::Code;
        assert_eq!(
            next_step(&status(Code::Unavailable), true, true),
            Next::MoveOn
        );
        assert_eq!(
            next_step(&status(Code::Unknown), false, false),
            Next::MoveOn
        );
        assert_eq!(
            next_step(&status(Code::Unauthenticated), true, false),
            Next::RefreshToken
        );
        assert_eq!(
            next_step(&status(Code::InvalidArgument), true, false),
            Next::DropResumeToken
        );
        // Without a resume token, or once the stream was in sync, it is the prefixes.
        assert_eq!(
            next_step(&status(Code::InvalidArgument), false, false),
            Next::Fail
        );
        assert_eq!(
            next_step(&status(Code::InvalidArgument), true, true),
            Next::Fail
        );
        assert_eq!(
            next_step(&status(Code::PermissionDenied), true, false),
            Next::Fail
        );
        assert_eq!(
            next_step(&Error::token_source("down"), false, false),
            Next::Backoff
        );
        assert_eq!(
            next_step(&Error::Protocol("?".into()), false, false),
            Next::MoveOn
        );
        // Refused everywhere alike: never a reason to try another server.
        assert_eq!(
            next_step(&status(Code::Unauthenticated), false, true),
            Next::RefreshToken
        );
        assert_eq!(
            next_step(&status(Code::PermissionDenied), false, true),
            Next::Fail
        );
    }

    #[test]
    fn transport_causes_are_kept_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let s = tonic::Status::from_error(Box::new(io));
        let e = Error::from(s);
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
