//! Floods of malformed input, refused without slowing well-behaved clients.

use super::*;

/// Items 5 and 10: a flood of malformed input (tokens dated past 9999, 10 KB kids,
/// crit headers, garbage resume tokens, request bytes that are not protobuf) is
/// refused with the right status every time, never panics the server or logs per
/// call, and a bystander's deliveries stay on time with memory bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_input_is_refused_without_slowing_others() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = temp_dir();
    let log = dir.path().join("server.log");
    let server = start(dir.path(), &[], None, &log).await;
    let writer = token(dir.path(), "acme", Role::Writer);
    let mut bystander = Bystander::new(server.addr, &writer).await;
    let baseline = bystander.probe(30).await;
    let rss_before = rss(server.pid());

    let pem = std::fs::read(dir.path().join("signing-key.pem")).unwrap();
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let sign = |header: &Header, exp: u64| {
        let claims = serde_json::json!({
            "iss": "configwatch", "sub": "x", "exp": exp,
            "custom:tenantId": "acme", "custom:role": "writer",
        });
        jsonwebtoken::encode(header, &claims, &key).unwrap()
    };
    let plain = Header::new(Algorithm::EdDSA);
    let mut long_kid = Header::new(Algorithm::EdDSA);
    long_kid.kid = Some("k".repeat(10_000));
    let mut crit = Header::new(Algorithm::EdDSA);
    crit.crit = Some(vec!["b64".into()]);
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let bad_tokens = [
        sign(&plain, u64::MAX),
        sign(&plain, i64::MAX as u64),
        sign(&long_kid, in_an_hour),
        sign(&crit, in_an_hour),
    ];

    let stop = tokio_util::sync::CancellationToken::new();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut flood = Vec::new();
    for bad in bad_tokens {
        let (addr, stop, refused) = (server.addr, stop.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let mut c = connect(addr, Some(&bad)).await;
            while !stop.is_cancelled() {
                let status = c.get(proto::GetRequest::default()).await.unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                assert!(status.message().len() < 600, "{}", status.message().len());
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    {
        // Resume tokens that are not tokens.
        let (addr, stop, refused, writer) =
            (server.addr, stop.clone(), refused.clone(), writer.clone());
        flood.push(tokio::spawn(async move {
            let mut c = connect(addr, Some(&writer)).await;
            while !stop.is_cancelled() {
                let status = c
                    .watch(proto::WatchRequest {
                        resume_token: "AAAA".into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    {
        // A PutRequest whose key is not UTF-8, over raw HTTP/2.
        let (addr, stop, refused, writer) =
            (server.addr, stop.clone(), refused.clone(), writer.clone());
        flood.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let body = Bytes::from_static(&[0, 0, 0, 0, 4, 0x0a, 0x02, 0xff, 0xfe]);
            let mut send = send;
            while !stop.is_cancelled() {
                send = send.ready().await.unwrap();
                let (resp, mut stream) = send
                    .send_request(grpc_request(addr, "Put", &writer), false)
                    .unwrap();
                stream.send_data(body.clone(), true).unwrap();
                let resp = resp.await.unwrap();
                // An error before any message comes "trailers-only": in the headers.
                let status = |h: &http::HeaderMap| {
                    h.get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let in_headers = status(resp.headers());
                let mut body = resp.into_body();
                while let Some(chunk) = body.data().await {
                    chunk.unwrap();
                }
                let trailers = body.trailers().await.unwrap().unwrap_or_default();
                let code = in_headers.or_else(|| status(&trailers)).unwrap_or_default();
                assert_eq!(code, "3", "INVALID_ARGUMENT, got grpc-status {code}");
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    wait_for(
        FLOOD_BUILDS_UP,
        || "200 malformed calls refused".into(),
        || refused.load(std::sync::atomic::Ordering::Relaxed) >= 200,
    )
    .await;
    let during = bystander.probe(30).await;
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }
    let grown = rss(server.pid()).saturating_sub(rss_before);
    let logged = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "malformed flood: {} refusals; bystander p99 {baseline:?} -> {during:?}; RSS +{} KiB; {} log bytes",
        refused.load(std::sync::atomic::Ordering::Relaxed),
        grown / 1024,
        logged.len()
    );
    assert!(!logged.contains("panicked"), "{logged}");
    assert!(
        logged.len() < 4096,
        "nothing is logged per refused call at warn: {logged}"
    );
    assert!(grown < 64 << 20, "RSS grew {} MiB", grown >> 20);
    assert!(
        during <= allowed(baseline),
        "bystander p99 {baseline:?} -> {during:?}"
    );
}
