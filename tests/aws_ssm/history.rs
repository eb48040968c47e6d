//! A key's history read from Parameter Store's own parameter history: the served
//! versions Get gave, configwatch's writers from each version's description,
//! another tool's writes with Parameter Store's `LastModifiedUser`, SecureString
//! values decrypted only for a read that asks, paging, Parameter Store's own
//! 100-version limit, and what a delete leaves.
//!
//! moto's GetParameterHistory: pages with a NextToken, refuses a MaxResults above
//! 50, keeps the last 100 versions and carries a description over an overwrite
//! without one, as Parameter Store does; its `LastModifiedUser` is always "N/A"
//! (Parameter Store gives the writer's IAM ARN), and without WithDecryption it
//! returns a readable stand-in for a SecureString's ciphertext.

use std::sync::Mutex;

use aws_sdk_ssm::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ssm::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ssm::error::BoxError;
use configwatch::store::Write;
use configwatch::store::history::{
    Audit, HistoryPage, HistoryQuery, MAX_PAGE_VERSIONS, Retention, Source, Version,
};

use super::*;

const KEY: &str = "param_config_flags/beta";
const PARAM: &str = "acme/flags/beta";

fn acme() -> Scope {
    Scope::tenant("acme").unwrap()
}

fn writer(subject: &str, reason: &str) -> Audit {
    Audit {
        subject: subject.into(),
        client_id: Some("console-app".into()),
        instance: "origin-1".into(),
        reason: Some(reason.into()),
    }
}

fn all(with_secret: bool) -> HistoryQuery {
    HistoryQuery {
        before: None,
        limit: MAX_PAGE_VERSIONS,
        with_secret,
        max_bytes: usize::MAX,
    }
}

async fn write(backend: &SsmBackend, key: &str, value: &str, secret: bool, audit: &Audit) -> u64 {
    let put = Write::Put {
        value: value.into(),
        secret,
    };
    backend
        .write(&acme(), key, put, None, audit)
        .await
        .unwrap_or_else(|e| panic!("write {key}: {e}"))
        .version
}

async fn history(backend: &SsmBackend, key: &str, query: HistoryQuery) -> HistoryPage {
    backend
        .history(&acme(), key, &query)
        .await
        .unwrap_or_else(|e| panic!("history of {key}: {e}"))
}

fn versions(page: &HistoryPage) -> Vec<u64> {
    page.versions.iter().map(|v| v.entry.version).collect()
}

fn value(v: &Version) -> Option<&str> {
    v.entry.value.as_deref()
}

/// Each version's `previous` is the next older one in the list.
fn assert_chained(versions: &[Version]) {
    for pair in versions.windows(2) {
        assert_eq!(pair[0].previous, pair[1].entry.version);
    }
}

#[tokio::test]
async fn history_lists_each_writer_newest_first_with_the_versions_get_served() {
    let env = start().await;
    let backend = &env.backend;
    let alice = writer("alice", "launch the beta");
    let bob = writer("bob", "INC-42: turn it off");
    let v1 = write(backend, KEY, "\"on\"", false, &alice).await;
    let v2 = write(backend, KEY, "\"off\"", false, &bob).await;
    // Another tool overwrites without a description: Parameter Store keeps bob's,
    // which must not make bob its writer.
    env.put_param(&name(PARAM), "half", ParameterType::String)
        .await;
    let v3 = env.version_in_ssm(&name(PARAM)).await;
    // A write through the API, then what Get serves.
    let mut c = env.server.client("acme", Role::Writer).await;
    let v4 = put(&mut c, KEY, "\"on\"").await.version;
    assert_eq!(get_key(&mut c, KEY).await.entries[0].version, v4);
    // Another tool with a description of its own.
    env.ssm
        .put_parameter()
        .name(name(PARAM))
        .value("off")
        .description("turned off by the nightly job")
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let v5 = env.version_in_ssm(&name(PARAM)).await;
    let read = backend.read(&acme(), KEY, false).await.unwrap().unwrap();
    assert_eq!(read.version, v5);

    let page = history(backend, KEY, all(false)).await;
    assert_eq!(versions(&page), [v5, v4, v3, v2, v1]);
    assert_eq!(page.next_before, None);
    let values: Vec<_> = page.versions.iter().map(value).collect();
    assert_eq!(
        values,
        [
            Some("\"off\""),
            Some("\"on\""),
            Some("\"half\""),
            Some("\"off\""),
            Some("\"on\"")
        ]
    );
    let moto_user = Some("N/A".to_owned());
    let external = Source::External {
        instance: String::new(),
        modified_by: moto_user,
    };
    assert_eq!(page.versions[0].source, external);
    assert!(
        matches!(&page.versions[1].source, Source::Api(a) if a.subject == "test"),
        "the API's write names the token's subject: {:?}",
        page.versions[1].source
    );
    assert_eq!(page.versions[2].source, external);
    assert_eq!(page.versions[3].source, Source::Api(bob));
    assert_eq!(page.versions[4].source, Source::Api(alice));
    assert_chained(&page.versions);
    assert_eq!(page.versions[4].previous, 0, "the first write");
    assert!(
        page.versions
            .iter()
            .all(|v| !v.entry.deleted && !v.entry.secret)
    );
    env.stop().await;
}

/// Records the `X-Amz-Target` and body of every request the client sends.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let target = request.headers().get("x-amz-target").unwrap_or("");
        let body = request.body().bytes().unwrap_or_default();
        self.0.lock().unwrap().push((
            target.trim_start_matches("AmazonSSM.").to_owned(),
            String::from_utf8_lossy(body).into_owned(),
        ));
        Ok(())
    }
}

impl Recorder {
    /// The operations sent with `WithDecryption` true since the last call.
    fn decrypting(&self) -> Vec<String> {
        let sent = std::mem::take(&mut *self.0.lock().unwrap());
        assert!(!sent.is_empty(), "the recorder saw the requests");
        sent.into_iter()
            .filter(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(body).unwrap()["WithDecryption"] == true
            })
            .map(|(target, _)| target)
            .collect()
    }
}

#[tokio::test]
async fn a_secure_strings_history_is_decrypted_only_for_a_read_that_asks_for_values() {
    let env = start().await;
    let recorder = Recorder::default();
    let config = aws_sdk_ssm::config::Builder::from(&env.moto.sdk_config().await)
        .interceptor(recorder.clone())
        .build();
    let backend = SsmBackend::new(aws_sdk_ssm::Client::from_conf(config), ROOT);
    let key = "param_config_db/password";
    let ops = writer("ops", "rotate");
    let v1 = write(&backend, key, "\"pw-1\"", true, &ops).await;
    let v2 = write(&backend, key, "\"pw-2\"", true, &ops).await;
    assert_eq!(recorder.decrypting(), Vec::<String>::new());

    let hidden = history(&backend, key, all(false)).await;
    assert_eq!(versions(&hidden), [v2, v1]);
    assert!(
        hidden
            .versions
            .iter()
            .all(|v| v.entry.secret && v.entry.value.is_none())
    );
    assert_eq!(hidden.versions[0].source, Source::Api(ops.clone()));
    assert_eq!(
        recorder.decrypting(),
        Vec::<String>::new(),
        "read without decryption"
    );

    let shown = history(&backend, key, all(true)).await;
    let values: Vec<_> = shown.versions.iter().map(value).collect();
    assert_eq!(values, [Some("\"pw-2\""), Some("\"pw-1\"")]);
    assert_eq!(recorder.decrypting(), ["GetParameterHistory"]);
    env.stop().await;
}

#[tokio::test]
async fn history_pages_through_the_last_100_versions_parameter_store_keeps() {
    let env = start().await;
    for i in 1..=105 {
        env.put_param(&name(PARAM), &format!("v{i}"), ParameterType::String)
            .await;
    }
    let newest = env.version_in_ssm(&name(PARAM)).await;

    // Pages of 40 over 100 versions, each read taking two pages of Parameter
    // Store's history.
    let mut seen: Vec<Version> = Vec::new();
    let mut before = None;
    loop {
        let query = HistoryQuery {
            before,
            limit: 40,
            with_secret: false,
            max_bytes: usize::MAX,
        };
        let page = history(&env.backend, KEY, query).await;
        assert!(page.versions.len() <= 40);
        seen.extend(page.versions);
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 100, "Parameter Store keeps the last 100");
    assert_eq!(seen[0].entry.version, newest);
    assert_eq!(value(&seen[0]), Some("\"v105\""));
    assert_eq!(value(&seen[99]), Some("\"v6\""));
    assert_chained(&seen);
    assert_eq!(seen[99].previous, 0, "what it replaced is gone");

    // configwatch's retention shows fewer.
    let three = SsmBackend::new(env.ssm.clone(), ROOT).with_retention(Retention {
        max_versions: 3,
        ..Retention::default()
    });
    let page = history(&three, KEY, all(false)).await;
    assert_eq!(versions(&page), versions_of(&seen[..3]));
    assert_eq!(page.next_before, None);
    env.stop().await;
}

fn versions_of(versions: &[Version]) -> Vec<u64> {
    versions.iter().map(|v| v.entry.version).collect()
}

#[tokio::test]
async fn after_a_delete_history_is_empty_and_starts_again_with_the_key() {
    let env = start().await;
    let backend = &env.backend;
    let never = history(backend, "param_config_never/written", all(false)).await;
    assert_eq!(never, HistoryPage::default());

    let ops = writer("ops", "set");
    write(backend, KEY, "\"a\"", false, &ops).await;
    let v2 = write(backend, KEY, "\"b\"", false, &ops).await;
    let tombstone = backend
        .write(&acme(), KEY, Write::Delete, Some(v2), &ops)
        .await
        .unwrap();
    assert!(tombstone.deleted);
    assert_eq!(
        history(backend, KEY, all(false)).await,
        HistoryPage::default(),
        "Parameter Store forgets a deleted parameter's versions"
    );

    let again = backend
        .write(
            &acme(),
            KEY,
            Write::Put {
                value: "\"c\"".into(),
                secret: false,
            },
            Some(0),
            &ops,
        )
        .await
        .unwrap();
    assert!(again.version > tombstone.version);
    let page = history(backend, KEY, all(false)).await;
    assert_eq!(versions(&page), [again.version]);
    assert_eq!(page.versions[0].previous, 0);
    assert_eq!(page.versions[0].source, Source::Api(ops));
    env.stop().await;
}
