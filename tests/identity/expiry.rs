//! Token expiry on a long stream: the Watch ends when its token expires and resumes
//! with a new token, losing nothing.

use super::*;

#[tokio::test]
async fn a_watch_ends_at_token_expiry_and_resumes_with_a_new_token_losing_nothing() {
    let dir = temp_dir();
    // The server's clock runs ahead: it reaches exp plus the 5 s leeway 1.5 s after
    // the server starts, so the stream ends then, over a real socket, without the
    // test waiting for exp and the leeway to pass on the real clock.
    let exp = now() + 60;
    let ends_at = UNIX_EPOCH + Duration::from_secs(exp + 5);
    let clock = configwatch::clock::Clock::starting_at(ends_at - Duration::from_millis(1500));
    let options = Options {
        clock,
        ..Options::default()
    };
    let server = TestServer::start_with(dir.path(), options).await;
    let mut writer = server.client("acme", Role::Writer).await;
    put(&mut writer, "tenant_config_a", "1").await;
    let short = sign_local(dir.path(), json!({"custom:tenantId": "acme", "exp": exp}));
    let mut c = connect(server.addr, Some(&short)).await;
    let mut w = watch(&mut c, watch_prefixes(&[])).await;
    let (_, done) = initial(&mut w).await;
    let mut token = done.resume_token;
    put(&mut writer, "tenant_config_a", "2").await;
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match w.message().await {
                Ok(Some(msg)) => {
                    if !msg.resume_token.is_empty() {
                        token = msg.resume_token;
                    }
                }
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ends at expiry");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token expired"), "{status:?}");

    // A change while the client is away, then a fresh token and a resume.
    put(&mut writer, "tenant_config_a", "3").await;
    put(&mut writer, "tenant_config_b", "1").await;
    let mut c = server.client("acme", Role::Reader).await;
    let mut w = watch(
        &mut c,
        proto::WatchRequest {
            resume_token: token,
            ..Default::default()
        },
    )
    .await;
    let (missed, done) = initial(&mut w).await;
    assert_eq!(done.initial_mode, InitialMode::Resumed as i32);
    assert_eq!(
        summary(&missed),
        [
            ("tenant_config_a".into(), 3, false),
            ("tenant_config_b".into(), 1, false)
        ]
    );
    server.stop().await;
}
