//! The admin routes: what each path answers. Knows the readiness and the registry,
//! not how connections are served.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use super::Admin;

const TEXT_TYPE: &str = "text/plain; charset=utf-8";
/// What `/readyz` and `/metrics` say before the server has reached its stores.
const STARTING: &str = "starting (waiting for the stores to answer)";

/// The answer to one admin request.
pub(super) fn answer<B>(admin: &Admin, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT_TYPE,
            "GET only\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, TEXT_TYPE, "ok\n".into()),
        "/readyz" => match admin.get().map(|s| s.readiness.check()) {
            Some(Ok(())) => reply(StatusCode::OK, TEXT_TYPE, "ready\n".into()),
            Some(Err(reason)) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_TYPE,
                format!("not ready: {reason}\n"),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_TYPE,
                format!("not ready: {STARTING}\n"),
            ),
        },
        "/metrics" => {
            let Some(started) = admin.get() else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT_TYPE,
                    format!("no metrics yet: {STARTING}\n"),
                );
            };
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &started.registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    super::text::CONTENT_TYPE,
                    super::text::prometheus_text(&text),
                ),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT_TYPE,
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT_TYPE,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use prometheus_client::registry::Registry;
    use tokio::sync::watch;

    use super::*;
    use crate::admin::Started;
    use crate::server::Readiness;
    use crate::source::health::Awaited;
    use crate::source::supervise::{SourceState, SourceStatus, SourcesState};

    fn sources(status: SourceStatus) -> SourcesState {
        let mut source = SourceState::running("sqs-events", Awaited::TaskOnly);
        source.status = status;
        source.restarts = 1;
        SourcesState {
            sources: vec![source],
            ..SourcesState::default()
        }
    }

    async fn get(admin: &Admin, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(()).unwrap_or_default();
        let response = answer(admin, &request);
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        (
            status,
            String::from_utf8_lossy(&body.unwrap_or_default()).into_owned(),
        )
    }

    #[tokio::test]
    async fn readyz_says_starting_then_is_503_with_the_reason_while_a_source_is_down() {
        let (state, rx) = watch::channel(sources(SourceStatus::Down));
        let admin = Admin::default();
        assert_eq!(
            get(&admin, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {STARTING}\n")
            )
        );
        assert_eq!(
            get(&admin, "/metrics").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&admin, "/healthz").await.0, StatusCode::OK);
        admin.started(Started {
            readiness: Readiness::new(Vec::new(), Some(rx)),
            registry: Registry::default(),
        });
        let (status, body) = get(&admin, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: source sqs-events down\n");
        assert_eq!(get(&admin, "/healthz").await.0, StatusCode::OK);
        state.send_replace(sources(SourceStatus::Running));
        assert_eq!(get(&admin, "/readyz").await.0, StatusCode::OK);
    }
}
