//! Cognito user pools, as a relay uses them: `InitiateAuth` with
//! `REFRESH_TOKEN_AUTH` exchanges a refresh token for a new ID token. It is an
//! unauthenticated API: the client is built with no credentials provider at all,
//! so none is looked up (no environment keys, no instance or task role) and the
//! requests go unsigned. The endpoint comes from the standard variables
//! (`AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER`, `AWS_ENDPOINT_URL`), and calls
//! retry by [`super::retry_config`].
//!
//! Boundary: the SDK call and its errors in plain terms. It neither keeps nor
//! logs the tokens it passes; what a token is for is the caller's business.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cognitoidentityprovider::Client;
use aws_sdk_cognitoidentityprovider::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_cognitoidentityprovider::types::AuthFlowType;

/// Why no ID token came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CognitoError {
    /// Cognito answered, and will answer the same until the configuration changes:
    /// the refresh token is revoked or expired, the app client is unknown or does
    /// not allow `REFRESH_TOKEN_AUTH`, the user is gone or disabled.
    #[error("Cognito refuses the refresh token ({0})")]
    Refused(String),
    /// Cognito could not be reached, or failed (after the SDK's retries).
    #[error("Cognito did not answer ({0})")]
    Failed(String),
}

/// The errors that only a change of configuration repairs.
const REFUSALS: &[&str] = &[
    "NotAuthorizedException",
    "UserNotFoundException",
    "UserNotConfirmedException",
    "PasswordResetRequiredException",
    "ResourceNotFoundException",
    "InvalidParameterException",
    "InvalidUserPoolConfigurationException",
];

/// A Cognito user pools client that signs nothing.
#[derive(Debug, Clone)]
pub struct CognitoIdp {
    client: Client,
}

impl CognitoIdp {
    /// A client for `region`, with no credentials.
    pub async fn new(region: String) -> CognitoIdp {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(super::retry_config())
            .region(Region::new(region))
            .no_credentials()
            .load()
            .await;
        CognitoIdp {
            client: Client::new(&config),
        }
    }

    /// A new ID token for the user whose refresh token this is, issued for app
    /// client `client_id` (one without a client secret).
    pub async fn id_token(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<String, CognitoError> {
        let answer = self
            .client
            .initiate_auth()
            .auth_flow(AuthFlowType::RefreshTokenAuth)
            .client_id(client_id)
            .auth_parameters("REFRESH_TOKEN", refresh_token)
            .send()
            .await;
        let output = match answer {
            Ok(output) => output,
            Err(e) => {
                let Some(service) = e.as_service_error() else {
                    return Err(CognitoError::Failed(DisplayErrorContext(&e).to_string()));
                };
                let code = service.code().unwrap_or("an unnamed error");
                let said = format!("{code}: {}", service.message().unwrap_or("no message"));
                return Err(if REFUSALS.contains(&code) {
                    CognitoError::Refused(said)
                } else {
                    CognitoError::Failed(said)
                });
            }
        };
        if output.challenge_name().is_some() {
            return Err(CognitoError::Refused(
                "it asks for a challenge instead of issuing tokens (REFRESH_TOKEN_AUTH issues tokens directly; check the user and app client)".to_owned(),
            ));
        }
        output
            .authentication_result
            .and_then(|result| result.id_token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| CognitoError::Failed("the answer holds no ID token".to_owned()))
    }
}

/// The region the standard AWS sources name (`AWS_REGION`, the profile, the
/// instance's metadata), if any.
pub async fn region_from_environment() -> Option<String> {
    use aws_config::meta::region::ProvideRegion as _;
    aws_config::default_provider::region::default_provider()
        .region()
        .await
        .map(|region| region.to_string())
}
