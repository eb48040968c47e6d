//! Where bearer tokens come from.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::BoxError;

/// A boxed future of a token.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'a>>;

/// Supplies bearer tokens (a JWT, without the `Bearer ` prefix).
///
/// Called before every connection attempt and every
/// [`read_secret`](crate::Client::read_secret), and again whenever the server
/// refuses a token (for instance when a watch ends with `UNAUTHENTICATED: token
/// expired`). Return a token that is valid now; cache inside it if minting one is
/// expensive.
///
/// Any `Fn() -> impl Future<Output = Result<String, E>>` is a token source:
///
/// ```
/// # use configwatch_client::TokenSource;
/// fn assert_source(_: impl TokenSource) {}
/// assert_source(|| async { Ok::<_, std::io::Error>(std::env::var("TOKEN").unwrap_or_default()) });
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// A token that is valid now.
    fn token(&self) -> TokenFuture<'_>;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self) -> TokenFuture<'_> {
        let fut = self();
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

/// A token source that always returns the same token: for tools and tests. A
/// service should pass a source that can mint or fetch a fresh token, since a
/// watch ends when its token expires.
pub fn static_token(token: impl Into<String>) -> impl TokenSource {
    let token: Arc<str> = Arc::from(token.into());
    move || {
        let token = token.clone();
        async move { Ok::<_, Infallible>(token.to_string()) }
    }
}
