//! A relay whose upstream token comes from Cognito (moto's): an origin that accepts
//! the pool's ID tokens, and a relay given only a refresh token of a user in the
//! group `relay`, with no AWS credentials in its environment. Clients of the pool
//! read, watch and write through it; a refused refresh token makes it not ready,
//! saying so, until a new one is written to its file; neither token ever reaches
//! its log; bad combinations of the flags exit 64.
//!
//! The refresh before expiry is shown on paused time in the unit tests of
//! `relay::credential::cognito` (moto's tokens live an hour, whatever the app
//! client says).

use std::process::Command;

use configwatch_test_support::cognito::CognitoPool;
use configwatch_test_support::moto::{Moto, REGION};

use super::*;

/// The environment variable holding the relay's refresh token.
const REFRESH_TOKEN_ENV: &str = "CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN";

/// moto's pool with its users, an origin accepting its tokens and a relay of it
/// whose token comes from Cognito.
struct CognitoTier {
    pool: CognitoPool,
    relay: ServerProcess,
    /// The relay's stderr: its log.
    relay_log: PathBuf,
    /// The refresh token the relay was given.
    refresh_token: String,
    /// The file it was given in, when it was.
    refresh_file: Option<PathBuf>,
    _origin: ServerProcess,
    _dirs: [tempfile::TempDir; 2],
    _moto: Moto,
}

/// The flags of a server accepting `pool`'s ID tokens issued for app client
/// `audience`.
fn pool_flags(pool: &CognitoPool, audience: &str) -> Vec<String> {
    vec![
        "--jwks-url".into(),
        pool.jwks_url(),
        "--issuer".into(),
        pool.issuer(),
        "--audience".into(),
        audience.to_owned(),
        "--token-use".into(),
        "id".into(),
    ]
}

/// The relay's environment: moto's Cognito endpoint and region, and no AWS
/// credentials of any kind (nor a profile that could hold some).
fn without_credentials(command: &mut Command, moto: &Moto) {
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ] {
        command.env_remove(name);
    }
    command
        .env("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", &moto.endpoint)
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        );
}

/// What a test changes in the tier.
#[derive(Default)]
struct Setup<'a> {
    /// The relay's refresh token; `edge-relay`'s own when `None`.
    refresh_token: Option<&'a str>,
    /// Given in a file rather than in CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN.
    in_file: bool,
    /// The origin accepts this app client's tokens only (none of the pool's).
    origin_audience: Option<&'a str>,
}

impl CognitoTier {
    /// Starts moto's pool (users: `edge-relay` in the group relay, `acme-writer`
    /// and `acme-reader` of tenant acme), the origin and the relay, as `setup`
    /// says.
    async fn start(setup: Setup<'_>) -> CognitoTier {
        let moto = Moto::start();
        let pool = CognitoPool::new(&moto).await;
        pool.user("edge-relay", &[], &["relay"]).await;
        pool.user("acme-writer", &[("custom:tenantId", "acme")], &["writer"])
            .await;
        pool.user("acme-reader", &[("custom:tenantId", "acme")], &["reader"])
            .await;
        let refresh_token = match setup.refresh_token {
            Some(token) => token.to_owned(),
            None => pool.refresh_token("edge-relay").await,
        };
        let flags = pool_flags(&pool, &pool.client);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let origin_flags = pool_flags(&pool, setup.origin_audience.unwrap_or(&pool.client));
        let origin_flags: Vec<&str> = origin_flags.iter().map(String::as_str).collect();

        let origin_dir = temp_dir();
        let origin = ServerProcess::start(serve_command(origin_dir.path(), &origin_flags)).await;
        let relay_dir = temp_dir();
        let mut command = serve_command(
            relay_dir.path(),
            &[
                "--admin-listen",
                "127.0.0.1:0",
                "--upstream",
                &origin.url(),
                "--source-down-grace",
                "1s",
                "--upstream-cognito-client-id",
                &pool.client,
            ],
        );
        command.args(&flags);
        let refresh_file = setup
            .in_file
            .then(|| relay_dir.path().join("refresh-token"));
        match &refresh_file {
            Some(file) => {
                std::fs::write(file, &refresh_token).expect("write the refresh token file");
                command
                    .arg("--upstream-cognito-refresh-token-file")
                    .arg(file);
            }
            None => {
                command.env(REFRESH_TOKEN_ENV, &refresh_token);
            }
        }
        without_credentials(&mut command, &moto);
        // Everything the relay logs, its dependencies' debug lines included.
        command.env("CONFIGWATCH_LOG", "debug");
        let relay_log = relay_dir.path().join("relay.log");
        command.stderr(std::fs::File::create(&relay_log).expect("the relay's log file"));
        let relay = ServerProcess::start(command).await;
        CognitoTier {
            pool,
            relay,
            relay_log,
            refresh_token,
            refresh_file,
            _origin: origin,
            _dirs: [origin_dir, relay_dir],
            _moto: moto,
        }
    }

    /// Stops the relay (SIGTERM); what it logged.
    async fn stop(self) -> String {
        self.relay
            .terminate(Duration::from_secs(20))
            .await
            .expect("the relay stops");
        std::fs::read_to_string(&self.relay_log).expect("the relay's log")
    }

    fn admin(&self) -> SocketAddr {
        self.relay.admin.expect("the relay's admin listener")
    }
}

const REFRESHES: &str = "configwatch_relay_upstream_token_refreshes_total";

fn refreshes(scrape: &Scrape, result: &str) -> f64 {
    scrape.value(&format!("{REFRESHES}{{result=\"{result}\"}}"))
}

#[tokio::test]
async fn a_relay_with_only_a_cognito_refresh_token_serves_the_pools_users() {
    let tier = CognitoTier::start(Setup::default()).await;
    let (reader, _) = tier.pool.sign_in("acme-reader").await;
    let (writer, _) = tier.pool.sign_in("acme-writer").await;

    // A reader watches through the relay; a writer's Put through the relay
    // reaches it.
    let mut r = connect(tier.relay.addr, Some(&reader)).await;
    let mut w = watch(&mut r, watch_prefixes(&[])).await;
    let (held, _) = initial(&mut w).await;
    assert!(held.is_empty(), "{held:?}");
    let mut wc = connect(tier.relay.addr, Some(&writer)).await;
    put(&mut wc, "tenant_config_flags", "{\"beta\":true}").await;
    assert_eq!(
        summary(&changes(&mut w, 1).await),
        [("tenant_config_flags".to_owned(), 1, false)]
    );
    let got = r.get(proto::GetRequest::default()).await.unwrap();
    assert_eq!(
        summary(&got.into_inner().entries),
        [("tenant_config_flags".to_owned(), 1, false)]
    );

    let admin = tier.admin();
    readyz(admin, 200, "").await;
    let scrape = Scrape::take(admin).await;
    assert_eq!(refreshes(&scrape, "ok"), 1.0, "one exchange so far");
    assert_eq!(refreshes(&scrape, "refused"), 0.0);
    assert_eq!(refreshes(&scrape, "failed"), 0.0);

    // Neither the refresh token nor any token (a JWT starts "eyJ") is logged.
    let refresh_token = tier.refresh_token.clone();
    let log = tier.stop().await;
    assert!(
        log.contains("upstream token obtained from Cognito"),
        "the relay says where its token comes from: {log}"
    );
    assert!(!log.contains(&refresh_token), "the refresh token is logged");
    assert!(!log.contains("eyJ"), "a token is logged");
}

#[tokio::test]
async fn a_refresh_token_cognito_refuses_makes_the_relay_not_ready_naming_cognito() {
    let tier = CognitoTier::start(Setup {
        refresh_token: Some("revoked-or-never-issued"),
        ..Setup::default()
    })
    .await;
    let admin = tier.admin();
    let not_ready = readyz(admin, 503, "Cognito refuses the relay's refresh token").await;
    assert!(
        not_ready.contains("Cognito refuses the relay's refresh token"),
        "{not_ready}"
    );
    assert!(not_ready.contains("NotAuthorizedException"), "{not_ready}");
    let (reader, _) = tier.pool.sign_in("acme-reader").await;
    let err = Call::get("", "")
        .on(tier.relay.addr, Some(&reader))
        .await
        .expect_err("the relay has no token to load with");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("Cognito refuses"), "{err:?}");
    let scrape = Scrape::take(admin).await;
    assert!(refreshes(&scrape, "refused") >= 1.0);
    assert_eq!(refreshes(&scrape, "ok"), 0.0);
    let log = tier.stop().await;
    assert!(
        log.contains("Cognito refuses the relay's refresh token"),
        "{log}"
    );
    assert!(!log.contains("revoked-or-never-issued"), "{log}");
}

#[tokio::test]
async fn a_new_refresh_token_written_to_the_file_is_used_without_a_restart() {
    let tier = CognitoTier::start(Setup {
        refresh_token: Some("not-issued-yet"),
        in_file: true,
        ..Setup::default()
    })
    .await;
    let admin = tier.admin();
    let not_ready = readyz(admin, 503, "Cognito refuses the relay's refresh token").await;
    assert!(not_ready.contains("Cognito refuses"), "{not_ready}");

    // Rotated in place, as an operator would (or as a mounted secret changes).
    let file = tier.refresh_file.clone().expect("the refresh token file");
    std::fs::write(&file, tier.pool.refresh_token("edge-relay").await).unwrap();
    readyz(admin, 200, "").await;
    let (writer, _) = tier.pool.sign_in("acme-writer").await;
    let relay_addr = tier.relay.addr;
    eventually(
        Duration::from_secs(30),
        || "the relay to serve with its new refresh token".to_owned(),
        || {
            let writer = writer.clone();
            async move {
                let mut c = connect(relay_addr, Some(&writer)).await;
                c.get(proto::GetRequest::default()).await.ok()
            }
        },
    )
    .await;
    let scrape = Scrape::take(admin).await;
    assert_eq!(refreshes(&scrape, "ok"), 1.0);
    assert!(refreshes(&scrape, "refused") >= 1.0);
}

#[tokio::test]
async fn a_token_the_upstream_refuses_is_refreshed_at_once_and_the_refusal_explained() {
    // The origin accepts another app client's tokens: the relay's ID tokens are
    // refused (UNAUTHENTICATED, audience), each one asking for a new one.
    let tier = CognitoTier::start(Setup {
        origin_audience: Some("another-app-client"),
        ..Setup::default()
    })
    .await;
    let admin = tier.admin();
    // Refreshed at once after the first refusal, then no more often than every 10s.
    let (reader, _) = tier.pool.sign_in("acme-reader").await;
    let relay_addr = tier.relay.addr;
    let ok = r#"configwatch_relay_upstream_token_refreshes_total{result="ok"}"#;
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(30),
        || "the relay to refresh the token the upstream refused".to_owned(),
        || {
            let reader = reader.clone();
            async move {
                // Each call makes the relay try its upstream again.
                let _ = Call::get("", "").on(relay_addr, Some(&reader)).await;
                (Scrape::take(admin).await.value(ok) >= 2.0).then_some(())
            }
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the second refresh waits out the gap after the first: {:?}",
        started.elapsed()
    );
    let not_ready = readyz(admin, 503, "refuses this relay's token").await;
    assert!(
        not_ready.contains("in the group 'relay'") && not_ready.contains("--audience"),
        "says what to check: {not_ready}"
    );
}

#[test]
fn a_relay_given_a_wrong_mix_of_credentials_exits_64_naming_the_fix() {
    let keyed = temp_dir();
    key_of(keyed.path());
    let token_file = keyed.path().join("upstream-token");
    std::fs::write(&token_file, "a-token").unwrap();
    let token_file = token_file.to_str().unwrap();
    let refresh_file = keyed.path().join("refresh-token");
    std::fs::write(&refresh_file, "a-refresh-token").unwrap();
    let refresh_file = refresh_file.to_str().unwrap();
    let absent = keyed.path().join("absent").display().to_string();
    let upstream = "http://127.0.0.1:9";
    let client = ["--upstream-cognito-client-id", "app-client"];
    let relay = ["--upstream", upstream];
    let with = |parts: &[&[&'static str]]| -> Vec<String> {
        parts
            .iter()
            .flat_map(|p| p.iter().map(|s| s.to_string()))
            .collect()
    };
    // (what, flags, refresh token in the environment, region known, the fix)
    let cases: Vec<(&str, Vec<String>, bool, bool, &str)> = vec![
        (
            "a token file and a refresh token",
            [
                with(&[&relay, &client]),
                vec!["--upstream-token-file".into(), token_file.into()],
            ]
            .concat(),
            true,
            true,
            "give the relay one upstream credential",
        ),
        (
            "a refresh token in a file and in the environment",
            [
                with(&[&relay, &client]),
                vec![
                    "--upstream-cognito-refresh-token-file".into(),
                    refresh_file.into(),
                ],
            ]
            .concat(),
            true,
            true,
            "give the Cognito refresh token once",
        ),
        (
            "a refresh token without its app client",
            with(&[&relay]),
            true,
            true,
            "needs --upstream-cognito-client-id",
        ),
        (
            "an app client without a refresh token",
            with(&[&relay, &client]),
            false,
            true,
            "needs the refresh token of a user in the group 'relay'",
        ),
        (
            "Cognito flags on an origin",
            with(&[&client]),
            false,
            true,
            "--upstream-cognito-client-id is for a relay: give --upstream too",
        ),
        (
            "a refresh token file that does not exist",
            [
                with(&[&relay, &client]),
                vec![
                    "--upstream-cognito-refresh-token-file".into(),
                    absent.clone(),
                ],
            ]
            .concat(),
            false,
            true,
            "cannot read the Cognito refresh token file",
        ),
        (
            "no region anywhere",
            with(&[&relay, &client]),
            true,
            false,
            "give --upstream-cognito-region",
        ),
    ];
    for (what, args, env_token, region, fix) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = serve_command(keyed.path(), &args);
        command
            .env_remove(REFRESH_TOKEN_ENV)
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_PROFILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials",
            );
        if env_token {
            command.env(REFRESH_TOKEN_ENV, "a-refresh-token");
        }
        if region {
            command.env("AWS_REGION", REGION);
        }
        let stderr = exits_64_naming(what, command, fix);
        assert!(!stderr.contains("a-refresh-token"), "{what}: {stderr}");
    }
}
