//! The relay's flags (`serve --upstream`): its upstreams, and where its own token
//! comes from (a token file, or a Cognito refresh token), checked before any port
//! is bound. The Cognito region is resolved later, by the composition root (it may
//! ask the AWS sources).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::super::Failure;
use crate::relay::RelaySettings;
use crate::relay::credential::{CognitoSettings, RefreshTokenSource, UpstreamCredential};

/// Relay mode: the server's sources are other configwatch servers.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Run as a relay of these configwatch servers (`http://host:port`; repeatable,
    /// or comma-separated): Get and Watch are served from views kept by one Watch
    /// per scope on an upstream, writes are forwarded with the caller's token.
    #[arg(long = "upstream", env = "CONFIGWATCH_UPSTREAM", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// File holding the relay's token (role relay) for its upstream Watches; read
    /// again when it changes, so it can be rotated.
    #[arg(long, env = "CONFIGWATCH_UPSTREAM_TOKEN_FILE")]
    pub upstream_token_file: Option<PathBuf>,
    /// How long a first use of a scope waits for an upstream before the call fails
    /// with UNAVAILABLE.
    #[arg(long, env = "CONFIGWATCH_UPSTREAM_LOAD_TIMEOUT", default_value_t = crate::relay::DEFAULT_LOAD_TIMEOUT.into())]
    pub upstream_load_timeout: humantime::Duration,
    /// Instead of a token file: the Cognito app client (no client secret,
    /// ALLOW_REFRESH_TOKEN_AUTH) whose ID tokens the relay sends upstream, obtained
    /// with the refresh token of a user in the group `relay`.
    #[arg(long, env = "CONFIGWATCH_UPSTREAM_COGNITO_CLIENT_ID")]
    pub upstream_cognito_client_id: Option<String>,
    /// File holding the relay's Cognito refresh token; read again when it changes.
    /// Or the token itself in CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN (never a
    /// flag).
    #[arg(long, env = "CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN_FILE")]
    pub upstream_cognito_refresh_token_file: Option<PathBuf>,
    /// The relay's Cognito refresh token, from the environment only (as ECS
    /// injects a secret): a flag's value would show in the process list.
    #[arg(skip = std::env::var(COGNITO_REFRESH_TOKEN_ENV).ok())]
    pub upstream_cognito_refresh_token: Option<String>,
    /// The user pool's region (default: the region of a Cognito --jwks-url, else
    /// the AWS region from the usual sources).
    #[arg(long, env = "CONFIGWATCH_UPSTREAM_COGNITO_REGION")]
    pub upstream_cognito_region: Option<String>,
}

/// The variable holding a relay's Cognito refresh token.
pub const COGNITO_REFRESH_TOKEN_ENV: &str = "CONFIGWATCH_UPSTREAM_COGNITO_REFRESH_TOKEN";

impl RelayArgs {
    /// The relay's settings when `--upstream` is given, checked against the other
    /// flags of `serve` (`--backend aws` is refused by [`ServeArgs::check`]);
    /// `None` for an origin.
    pub fn settings(&self, new_store: bool) -> Result<Option<RelaySettings>, Failure> {
        let upstreams: Vec<String> = self
            .upstreams
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if upstreams.is_empty() {
            let stray = [
                ("--upstream-token-file", self.upstream_token_file.is_some()),
                (
                    "--upstream-cognito-client-id",
                    self.upstream_cognito_client_id.is_some(),
                ),
                (
                    "--upstream-cognito-refresh-token-file",
                    self.upstream_cognito_refresh_token_file.is_some(),
                ),
                (
                    COGNITO_REFRESH_TOKEN_ENV,
                    self.upstream_cognito_refresh_token.is_some(),
                ),
                (
                    "--upstream-cognito-region",
                    self.upstream_cognito_region.is_some(),
                ),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(Failure::usage(format!(
                    "{flag} is for a relay: give --upstream too"
                )));
            }
            return Ok(None);
        }
        if new_store {
            return Err(Failure::usage(
                "--new-store is for the embedded store; a relay keeps none",
            ));
        }
        let credential = self.credential()?;
        if *self.upstream_load_timeout < Duration::from_secs(1) {
            return Err(Failure::usage(
                "--upstream-load-timeout must be at least 1s",
            ));
        }
        let settings = RelaySettings {
            upstreams,
            credential,
            load_timeout: *self.upstream_load_timeout,
        };
        // The URLs are checked here, before any port is bound.
        crate::relay::upstreams::Upstreams::new(&settings.upstreams)
            .map_err(|e| Failure::usage(e.to_string()))?;
        Ok(Some(settings))
    }
}

impl RelayArgs {
    /// Where the relay's own token comes from: exactly one of a token file and a
    /// Cognito refresh token, the latter with its app client.
    fn credential(&self) -> Result<UpstreamCredential, Failure> {
        let nonblank = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let refresh_token = match (
            &self.upstream_cognito_refresh_token_file,
            self.upstream_cognito_refresh_token.as_deref(),
        ) {
            (Some(_), Some(_)) => {
                return Err(Failure::usage(format!(
                    "give the Cognito refresh token once: in {COGNITO_REFRESH_TOKEN_ENV} or with --upstream-cognito-refresh-token-file, not both"
                )));
            }
            (Some(file), None) => Some(RefreshTokenSource::File(file.clone())),
            (None, Some(value)) => Some(RefreshTokenSource::Value(value.to_owned())),
            (None, None) => None,
        };
        let client_id = nonblank(&self.upstream_cognito_client_id);
        let cognito_flags_without_token =
            self.upstream_cognito_client_id.is_some() || self.upstream_cognito_region.is_some();
        match (&self.upstream_token_file, refresh_token) {
            (Some(_), Some(_)) => Err(Failure::usage(format!(
                "give the relay one upstream credential: --upstream-token-file, or a Cognito refresh token ({COGNITO_REFRESH_TOKEN_ENV} or --upstream-cognito-refresh-token-file), not both"
            ))),
            (Some(_), None) if cognito_flags_without_token => Err(Failure::usage(
                "--upstream-cognito-client-id and --upstream-cognito-region go with a Cognito refresh token, not with --upstream-token-file",
            )),
            (Some(file), None) => Ok(UpstreamCredential::TokenFile(file.clone())),
            (None, None) if cognito_flags_without_token => Err(Failure::usage(format!(
                "a relay taking its token from Cognito needs the refresh token of a user in the group 'relay': in {COGNITO_REFRESH_TOKEN_ENV} or --upstream-cognito-refresh-token-file"
            ))),
            (None, None) => Err(Failure::usage(format!(
                "--upstream needs --upstream-token-file (a file holding a token with the relay role: configwatch token --role relay), or a Cognito refresh token ({COGNITO_REFRESH_TOKEN_ENV} or --upstream-cognito-refresh-token-file, with --upstream-cognito-client-id)"
            ))),
            (None, Some(refresh_token)) => {
                let Some(client_id) = client_id else {
                    return Err(Failure::usage(
                        "a Cognito refresh token needs --upstream-cognito-client-id: the app client it was issued for (no client secret, ALLOW_REFRESH_TOKEN_AUTH)",
                    ));
                };
                let region = match &self.upstream_cognito_region {
                    Some(region) => Some(nonblank(&Some(region.clone())).ok_or_else(|| {
                        Failure::usage(
                            "--upstream-cognito-region must name a region, e.g. eu-west-1",
                        )
                    })?),
                    None => None,
                };
                Ok(UpstreamCredential::Cognito(CognitoSettings {
                    client_id,
                    refresh_token,
                    region,
                }))
            }
        }
    }
}
