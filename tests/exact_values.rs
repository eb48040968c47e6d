//! Values come back exactly as written, requests that cannot be decoded are the
//! caller's mistake, resume tokens are checked, and every answer carries the right
//! revision: over real sockets, on the embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Buf, BufMut};
use common::*;
use configwatch::auth::Role;
use configwatch::proto;
use configwatch::proto::watch_response::InitialMode;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

#[tokio::test]
async fn numbers_come_back_exactly_as_written_through_get_and_watch() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let mut w = watch(&mut c, watch_prefixes(&["tenant_config_"])).await;
    initial(&mut w).await;

    let written = r#"{"id":123456789012345678901,"amount":0.1000000000000000055511151231257827,"big":18446744073709551616,"e":1E2,"tiny":-1.5e-125,"cents":1.50,"s":"\u00e9"}"#;
    let e = put(&mut c, "tenant_config_ids", written).await;
    assert_eq!(e.value, written, "the Put answer");
    let pushed = changes(&mut w, 1).await;
    assert_eq!(pushed[0].value, written, "the Watch delta");
    let got = get_keys(&mut c, &["tenant_config_ids"]).await;
    assert_eq!(got.entries[0].value, written, "Get");

    // After a restart, from the store itself.
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let got = get_keys(&mut c, &["tenant_config_ids"]).await;
    assert_eq!(got.entries[0].value, written, "Get after a restart");
    server.stop().await;
}

#[tokio::test]
async fn a_number_that_cannot_be_kept_exactly_is_refused_and_nothing_is_written() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    for value in ["{\"n\":123456789012345678901234567890123456789}", "[1e400]"] {
        let status = c
            .put(proto::PutRequest {
                key: "tenant_config_n".into(),
                value: value.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{value}: {status:?}");
        assert!(
            status.message().contains("significant digits")
                && status.message().contains("JSON string"),
            "the message says what to do: {}",
            status.message()
        );
    }
    let got = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(got.entries.is_empty());
    server.stop().await;
}

/// Sends request bodies as raw bytes, to reach the server's decoder with what no
/// generated client would send.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct AnyDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for AnyDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = AnyDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> AnyDecoder {
        AnyDecoder
    }
}

async fn raw_call(server: &TestServer, method: &str, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    let bearer = format!("Bearer {}", server.token("acme", Role::Writer));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let path = format!("/configwatch.v1.ConfigService/{method}");
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    match grpc.unary(request, path, RawCodec).await {
        Ok(_) => tonic::Status::ok("answered"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_request_that_cannot_be_decoded_is_invalid_argument() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    // PutRequest.key (field 1) with bytes that are not UTF-8.
    let status = raw_call(&server, "Put", vec![0x0a, 0x02, 0xff, 0xfe]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{}", status.message());
    // A GetRequest cut in the middle of a field.
    let status = raw_call(&server, "Get", vec![0x12, 0x20, b'p']).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A WatchRequest whose prefix is not UTF-8.
    let status = raw_call(&server, "Watch", vec![0x0a, 0x01, 0xc3]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Nothing was lost and the server still answers others.
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_after", "1").await;
    server.stop().await;
}

#[tokio::test]
async fn text_that_is_not_a_resume_token_is_invalid_argument() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    let real = c
        .get(proto::GetRequest::default())
        .await
        .unwrap()
        .into_inner()
        .resume_token;
    // One character changed, at the start, the middle and the end.
    let mut changed = Vec::new();
    for i in [0, real.len() / 2, real.len() - 2] {
        let mut t: Vec<char> = real.chars().collect();
        t[i] = if t[i] == 'A' { 'B' } else { 'A' };
        changed.push(t.into_iter().collect::<String>());
    }
    for bad in ["AAAA", "test", "x"]
        .into_iter()
        .map(str::to_owned)
        .chain(changed)
    {
        let status = c
            .watch(proto::WatchRequest {
                resume_token: bad.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().contains("resume_token"),
            "{}",
            status.message()
        );
    }
    // The real one still resumes.
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: real,
            ..Default::default()
        },
    )
    .await;
    let (_, last) = initial(&mut w).await;
    assert_eq!(last.initial_mode(), InitialMode::Resumed);
    server.stop().await;
}

#[tokio::test]
async fn the_first_put_to_a_tenant_nobody_has_read_answers_its_revision() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    put(&mut c, "tenant_config_a", "1").await;
    server.stop().await;

    // A new server run: nobody has read the tenant yet.
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let written = put(&mut c, "tenant_config_b", "2").await;
    assert_ne!(written.revision, 0, "the Put answer names a revision");
    let got = get_keys(&mut c, &["tenant_config_b"]).await;
    assert_eq!(got.entries[0].version, written.version);
    assert_eq!(got.entries[0].revision, written.revision);
    let deleted = delete(&mut c, "tenant_config_a").await;
    assert!(deleted.revision > written.revision);
    let mut other = server.client("other", Role::Writer).await;
    let e = other
        .delete(proto::DeleteRequest {
            key: "tenant_config_none".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn the_command_line_prints_values_with_every_digit() {
    let dir = temp_dir();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client("acme", Role::Writer).await;
    let written =
        r#"{"id":123456789012345678901,"x":1E2,"f":0.1000000000000000055511151231257827}"#;
    put(&mut c, "tenant_config_ids", written).await;
    let token = server.token("acme", Role::Reader);
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args([
                "get",
                "tenant_config_ids",
                "--server",
                &url,
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(r#"{{"key":"tenant_config_ids","version":1,"value":{written}}}"#)
    );
    server.stop().await;
}
