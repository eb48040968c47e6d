//! The relay's own credential, and the configurations a relay refuses: its upstream
//! token file rotated without a restart (an invalid token replaced; a token that
//! expires under a running upstream Watch, replaced before it does); a relay
//! without its upstream's key, without a token file (or with one that is missing or
//! empty), on AWS or with a TLS upstream exits 64 naming the fix.

use super::*;

#[tokio::test]
async fn a_rotated_upstream_token_file_is_used_without_a_restart() {
    let tier = Tier::start(Some("not-a-token")).await;
    let writer = tier.token("acme", None, Role::Writer);
    let mut origin = connect(tier.origin.addr, Some(&writer)).await;
    put(&mut origin, "tenant_config_a", "1").await;

    let refused = Call::get("", "")
        .on(tier.relay.addr, Some(&writer))
        .await
        .expect_err("the upstream refuses the relay's token");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("Unauthenticated"), "{refused:?}");
    // Its health check needs no token, but readiness knows the token is refused.
    let admin = tier.relay.admin.expect("the relay's admin listener");
    let not_ready = readyz(admin, 503, "refuses this relay's token").await;
    assert!(
        not_ready.contains("refuses this relay's token"),
        "{not_ready}"
    );

    // Rotated in place (written over), as an operator would.
    std::fs::write(tier.token_file(), relay_token_of(tier.origin_dir.path())).unwrap();
    let relay_addr = tier.relay.addr;
    let got = eventually(
        Duration::from_secs(30),
        || "the relay to serve with its new token".to_owned(),
        || {
            let writer = writer.clone();
            async move {
                let mut c = connect(relay_addr, Some(&writer)).await;
                c.get(proto::GetRequest::default()).await.ok()
            }
        },
    )
    .await
    .into_inner();
    assert_eq!(
        summary(&got.entries),
        [("tenant_config_a".to_owned(), 1, false)]
    );
    readyz(admin, 200, "").await;
}

#[test]
fn a_relay_that_cannot_work_exits_64_naming_the_fix() {
    let origin_dir = temp_dir();
    let token = relay_token_of(origin_dir.path());
    let keyed = temp_dir();
    std::fs::copy(
        origin_dir.path().join(KEY_FILE),
        keyed.path().join(KEY_FILE),
    )
    .unwrap();
    let keyless = temp_dir();
    let file = keyed.path().join("upstream-token");
    std::fs::write(&file, token).unwrap();
    let file = file.to_str().unwrap();
    let absent = keyed.path().join("absent").display().to_string();
    let empty = keyed.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let upstream = "http://127.0.0.1:9";
    let cases: [(&str, &Path, Vec<&str>, &str); 7] = [
        (
            "no signing key",
            keyless.path(),
            vec!["--upstream", upstream, "--upstream-token-file", file],
            "copy signing-key.pem from the upstream's data directory",
        ),
        (
            "no token file",
            keyed.path(),
            vec!["--upstream", upstream],
            "--upstream needs --upstream-token-file",
        ),
        (
            "a token file that does not exist",
            keyed.path(),
            vec!["--upstream", upstream, "--upstream-token-file", &absent],
            "cannot read the upstream token file",
        ),
        (
            "an empty token file",
            keyed.path(),
            vec!["--upstream", upstream, "--upstream-token-file", &empty],
            "write a token with the relay role into it (configwatch token --role relay)",
        ),
        (
            // An origin's command with --upstream added.
            "a relay on AWS",
            keyed.path(),
            vec![
                "--upstream",
                upstream,
                "--upstream-token-file",
                file,
                "--backend",
                "aws",
                "--table",
                "configwatch-tenant-config",
            ],
            "leave out --backend aws",
        ),
        (
            // Said first, not the AWS flags' own checks.
            "a relay on AWS without a table",
            keyed.path(),
            vec![
                "--upstream",
                upstream,
                "--upstream-token-file",
                file,
                "--backend",
                "aws",
            ],
            "leave out --backend aws",
        ),
        (
            "TLS to the upstream",
            keyed.path(),
            vec![
                "--upstream",
                "https://127.0.0.1:9",
                "--upstream-token-file",
                file,
            ],
            "reach it over http://",
        ),
    ];
    for (what, dir, args, fix) in cases {
        exits_64_naming(what, serve_command(dir, &args), fix);
    }
}

#[tokio::test]
async fn the_upstream_watch_outlives_the_relay_token_it_started_with() {
    // A token that expires within seconds (the origin ends a Watch at its token's
    // expiry, after a leeway of 5 s), replaced in the file while the Watch runs.
    let tier = Tier::start(Some("not-yet")).await;
    let short = key_of(tier.origin_dir.path())
        .issue_relay(Duration::from_secs(1), "relay")
        .unwrap();
    std::fs::write(tier.token_file(), short).unwrap();
    let writer = tier.token("acme", None, Role::Writer);
    let mut origin = connect(tier.origin.addr, Some(&writer)).await;
    put(&mut origin, "tenant_config_a", "1").await;
    let mut client = connect(tier.relay.addr, Some(&writer)).await;
    let mut w = watch(&mut client, watch_prefixes(&[])).await;
    let (held, _) = initial(&mut w).await;
    assert_eq!(summary(&held), [("tenant_config_a".to_owned(), 1, false)]);
    std::fs::write(tier.token_file(), relay_token_of(tier.origin_dir.path())).unwrap();

    let admin = tier.relay.admin.expect("the relay's admin listener");
    let resumed = r#"configwatch_relay_upstream_syncs_total{mode="resumed"}"#;
    eventually(
        Duration::from_secs(30),
        || "the relay's upstream Watch to end at its token's expiry and resume".to_owned(),
        || async move { (Scrape::take(admin).await.value(resumed) >= 1.0).then_some(()) },
    )
    .await;
    let scrape = Scrape::take(admin).await;
    assert_eq!(
        scrape.value(r#"configwatch_relay_upstream_syncs_total{mode="full"}"#),
        1.0,
        "only the first state was full"
    );
    // The client's stream went on: a change made now reaches it as a delta.
    put(&mut origin, "tenant_config_a", "2").await;
    let delta = changes(&mut w, 1).await;
    assert_eq!(summary(&delta), [("tenant_config_a".to_owned(), 2, false)]);
}
