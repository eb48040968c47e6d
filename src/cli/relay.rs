//! Part of the composition root: builds a relay (`serve --upstream`): its own
//! credential (a token file, or Cognito's ID tokens through `aws::cognito`), its
//! hub loading through the upstreams, the probe that readiness follows, and the
//! relay's counters for the admin listener.

use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use async_trait::async_trait;

use super::Failure;
use crate::admin::family::CounterFamily;
use crate::admin::scalar::Scalar;
use crate::aws::cognito::{CognitoError, CognitoIdp};
use crate::clock::Clock;
use crate::hub::{Hub, HubConfig};
use crate::relay::credential::{
    CognitoSettings, Credential, CredentialError, ExchangeError, IdTokens, UpstreamCredential,
};
use crate::relay::{Relay, RelaySettings};
use crate::source::health::Awaited;
use crate::source::supervise::Supervisor;
use crate::store::Router;

/// A relay without an identity provider checks tokens with its upstream's own
/// signing key, which it must be given: it never makes one (tokens its upstream
/// signed would then all be refused).
pub(super) fn check_key(data_dir: &Path, jwks: bool) -> Result<(), Failure> {
    let key = data_dir.join(crate::auth::local::KEY_FILE);
    if jwks || key.exists() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "a relay checks tokens with its upstream's signing key, and {} does not exist: copy {} from the upstream's data directory into --data-dir {}, or use --jwks-url",
        key.display(),
        crate::auth::local::KEY_FILE,
        data_dir.display()
    )))
}

/// Cognito's answers in the relay's terms.
struct CognitoExchange {
    idp: CognitoIdp,
    client_id: String,
}

#[async_trait]
impl IdTokens for CognitoExchange {
    async fn exchange(&self, refresh_token: &str) -> Result<String, ExchangeError> {
        self.idp
            .id_token(&self.client_id, refresh_token)
            .await
            .map_err(|e| match e {
                CognitoError::Refused(why) => ExchangeError::Refused(why),
                CognitoError::Failed(why) => ExchangeError::Failed(why),
            })
    }
}

/// The user pool's region: the flag's, else the one in a Cognito `--jwks-url`,
/// else the AWS region of the usual sources; none is a usage error.
async fn cognito_region(
    settings: &CognitoSettings,
    jwks_url: Option<&str>,
) -> Result<String, Failure> {
    if let Some(region) = &settings.region {
        return Ok(region.clone());
    }
    if let Some(region) = jwks_url.and_then(region_of_jwks) {
        return Ok(region);
    }
    crate::aws::cognito::region_from_environment().await.ok_or_else(|| {
        Failure::usage(
            "cannot tell the Cognito user pool's region: give --upstream-cognito-region (or AWS_REGION, or a Cognito --jwks-url)",
        )
    })
}

/// The region of a Cognito user pool's JWKS URL
/// (`https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json`).
fn region_of_jwks(jwks_url: &str) -> Option<String> {
    let issuer = super::serve::cognito_issuer(jwks_url)?;
    let host = issuer.strip_prefix("https://")?.split('/').next()?;
    let region = host
        .strip_prefix("cognito-idp.")?
        .strip_suffix(".amazonaws.com")?;
    Some(region.to_owned())
}

/// The relay's own credential, as `settings` describe it.
async fn credential(
    settings: &RelaySettings,
    jwks_url: Option<&str>,
    stop: CancellationToken,
) -> Result<Credential, Failure> {
    let usage = |e: CredentialError| Failure::usage(e.to_string());
    match &settings.credential {
        UpstreamCredential::TokenFile(path) => Credential::file(path).map_err(usage),
        UpstreamCredential::Cognito(cognito) => {
            let region = cognito_region(cognito, jwks_url).await?;
            let exchange = CognitoExchange {
                idp: CognitoIdp::new(region.clone()).await,
                client_id: cognito.client_id.clone(),
            };
            tracing::info!(client_id = %cognito.client_id, %region, "the upstream token comes from Cognito");
            Credential::cognito(cognito, Arc::new(exchange), Clock::system(), stop).map_err(usage)
        }
    }
}

/// The relay's hub and its supervised probe (the source named `upstream`), and the
/// router of a server that keeps no store.
pub(super) async fn start_relay(
    settings: &RelaySettings,
    jwks_url: Option<&str>,
    hub_config: HubConfig,
    sources: Supervisor,
    stop: CancellationToken,
) -> Result<(Arc<Router>, Arc<Hub>, Supervisor, Relay), Failure> {
    let credential = credential(settings, jwks_url, stop.child_token()).await?;
    let relay =
        Relay::new(settings, credential, stop).map_err(|e| Failure::usage(e.to_string()))?;
    let hub = Arc::new(Hub::new(Arc::new(relay.clone()), hub_config));
    relay.attach(&hub);
    let mut sources = sources;
    let probe = relay.clone();
    sources.spawn_reporting("upstream", Awaited::Success, move |stop, health| {
        probe.clone().probe(stop, health)
    });
    Ok((Arc::new(Router::new(Vec::new())), hub, sources, relay))
}

/// The relay's counters, for `/metrics`.
pub(super) fn register_relay(registry: &mut Registry, relay: &Relay) {
    let counters = relay.counters();
    let watches = counters.clone();
    registry.register_collector(Scalar::gauge(
        "configwatch_relay_upstream_watches",
        "Upstream Watch streams open now: one per scope this relay serves.",
        move || {
            watches
                .upstream_watches
                .load(std::sync::atomic::Ordering::Relaxed)
        },
    ));
    registry.register_collector(Box::new(CounterFamily {
        name: "configwatch_relay_upstream_syncs",
        help: "Initial states received from upstreams, by how they were built (full: the whole scope; diff or resumed: only what changed).",
        label: "mode",
        read: Box::new(move || counters.syncs()),
    }));
    if let Some(refreshes) = relay.token_refreshes() {
        registry.register_collector(Box::new(CounterFamily {
            name: "configwatch_relay_upstream_token_refreshes",
            help: "Exchanges of the relay's Cognito refresh token for its upstream token, by result (ok; refused: Cognito refuses the refresh token; failed: Cognito did not answer).",
            label: "result",
            read: Box::new(move || refreshes.by_result()),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_region_is_read_from_a_cognito_jwks_url() {
        assert_eq!(
            region_of_jwks(
                "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json"
            )
            .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of_jwks("http://127.0.0.1:5000/us-east-1_abc/.well-known/jwks.json"),
            None
        );
        assert_eq!(
            region_of_jwks("https://idp.example.com/.well-known/jwks.json"),
            None
        );
    }
}
