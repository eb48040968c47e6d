//! The tower layer that authenticates ConfigService calls before any handler runs,
//! starts Watch calls on threads of their own, and meters replies against the
//! connection's budget. Health and reflection pass through without a token.
//! Refusals are logged through the server's rate-limited [`RefusalLog`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::refusal_log::RefusalLog;
use crate::api::budget::{Metered, MeteredStream, ReplyHold, StreamBudget};
use crate::auth::Authenticator;

/// The gRPC path prefix of the service that needs a token.
const PROTECTED: &str = "/configwatch.v1.";

/// Authenticates ConfigService calls before any handler runs.
#[derive(Clone)]
pub(super) struct AuthLayer {
    pub auth: Arc<Authenticator>,
    /// The runtime Watch calls start on.
    pub starts: tokio::runtime::Handle,
    pub refusals: Arc<RefusalLog>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            starts: self.starts.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    starts: tokio::runtime::Handle,
    refusals: Arc<RefusalLog>,
}

/// The gRPC path of Watch.
const WATCH: &str = "/configwatch.v1.ConfigService/Watch";

/// Aborts a spawned task when the call that waits for it is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !request.uri().path().starts_with(PROTECTED) {
            return Box::pin(inner.call(request));
        }
        let auth = self.auth.clone();
        let starts = self.starts.clone();
        let refusals = self.refusals.clone();
        Box::pin(async move {
            match auth.authenticate(request.headers()).await {
                Ok(identity) if request.uri().path() == WATCH => {
                    request.extensions_mut().insert(identity);
                    let mut task = AbortOnDrop(starts.spawn(inner.call(request)));
                    match (&mut task.0).await {
                        // Its messages count against the connection's budget.
                        Ok(Ok(mut response)) => {
                            if let Some(budget) = response.extensions_mut().remove::<StreamBudget>()
                            {
                                response = response.map(|body| {
                                    tonic::body::Body::new(MeteredStream::new(body, budget))
                                });
                            }
                            Ok(response)
                        }
                        Ok(Err(e)) => Err(e),
                        Err(e) => {
                            tracing::error!(error = %e, "a Watch call failed to start");
                            Ok(
                                tonic::Status::internal("the Watch call failed to start; retry")
                                    .into_http(),
                            )
                        }
                    }
                }
                Ok(identity) => {
                    request.extensions_mut().insert(identity);
                    let mut response = inner.call(request).await?;
                    // A Get reply holds its budget until handed on (api::budget).
                    if let Some(hold) = response.extensions_mut().remove::<ReplyHold>() {
                        response =
                            response.map(|body| tonic::body::Body::new(Metered::new(body, hold)));
                    }
                    Ok(response)
                }
                Err(e) => {
                    auth.refusals().count(&e);
                    refusals.refused(&e, request.uri().path());
                    Ok(tonic::Status::from(e).into_http())
                }
            }
        })
    }
}
