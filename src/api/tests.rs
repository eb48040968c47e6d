//! A write whose call is dropped while the store commits it (its client reset the
//! stream, or the relay forwarding it lost its own caller) is still applied to the
//! view: the commit and the hand-over to the hub are one task, not two steps of
//! the call.

use std::error::Error;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::auth::{Identity, Role};
use crate::hub::HubConfig;
use crate::model::Scope;
use crate::store::history::Audit;
use crate::store::{Backend, StoreError};

/// A store whose writes wait for the test: each says it began, then commits once
/// released.
struct Gated {
    began: Notify,
    release: Semaphore,
}

impl Gated {
    fn new() -> Gated {
        Gated {
            began: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

#[async_trait]
impl Backend for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    async fn load(&self, _: &Scope, _: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }

    async fn write(
        &self,
        _: &Scope,
        key: &str,
        write: Write,
        _: Option<u64>,
        _: &Audit,
    ) -> Result<Entry, StoreError> {
        self.began.notify_one();
        let _permit = self.release.acquire().await;
        let Write::Put { value, secret } = write else {
            return Ok(Entry::tombstone(key, 2, 0));
        };
        Ok(Entry {
            key: Arc::from(key),
            version: 1,
            value: Some(Arc::from(value)),
            secret,
            deleted: false,
            updated_at: 0,
            revision: 0,
        })
    }

    async fn read(&self, _: &Scope, _: &str, _: bool) -> Result<Option<Entry>, StoreError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_put_dropped_while_the_store_commits_it_still_reaches_the_view()
-> Result<(), Box<dyn Error>> {
    let store = Arc::new(Gated::new());
    let backend: Arc<dyn Backend> = store.clone();
    let router = Arc::new(Router::new(vec![(&keys::TENANT_CONFIG, backend)]));
    let hub = Arc::new(Hub::new(router.clone(), HubConfig::default()));
    let api = ConfigApi::new(
        hub.clone(),
        router,
        Limits::default(),
        WatchSettings::default(),
        Shutdown::new(),
    );
    let scope = Scope::tenant("acme")?;
    let mut request = Request::new(proto::PutRequest {
        key: "tenant_config_a".into(),
        value: "1".into(),
        expected_version: Some(0),
        ..Default::default()
    });
    request.extensions_mut().insert(Identity {
        scope: Some(scope.clone()),
        role: Role::Writer,
        subject: "test".into(),
        client_id: None,
        expires_at: None,
    });
    let call = tokio::spawn(async move { api.put(request).await.map(|_| ()) });
    store.began.notified().await;
    // The caller goes away while the store commits.
    call.abort();
    assert!(call.await.is_err_and(|e| e.is_cancelled()));
    store.release.add_permits(1);

    let applied = tokio::time::timeout(Duration::from_secs(5), async {
        while hub.held(&scope, "tenant_config_a").is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        applied.is_ok(),
        "the committed write never reached the view"
    );
    Ok(())
}
