//! A Cognito user pool on moto, as the suites' identity provider: custom:tenantId
//! (immutable) and custom:role (mutable, as many pools have it), an app client with
//! no secret that allows ADMIN_USER_PASSWORD_AUTH and REFRESH_TOKEN_AUTH, and
//! admin-created users in groups.
//!
//! moto signs ID tokens with the real AWS issuer
//! (`https://cognito-idp.us-east-1.amazonaws.com/<pool>`) while serving the JWKS
//! itself: a server under test is given both ([`CognitoPool::jwks_url`],
//! [`CognitoPool::issuer`]).

use aws_sdk_cognitoidentityprovider::types::{
    AttributeDataType, AttributeType, AuthFlowType, ExplicitAuthFlowsType, MessageActionType,
    SchemaAttributeType,
};

use crate::moto::{Moto, REGION};

/// Every user's password.
const PASSWORD: &str = "Real-Passw0rd!";

pub struct CognitoPool {
    pub idp: aws_sdk_cognitoidentityprovider::Client,
    /// The user pool id.
    pub id: String,
    /// The app client id (the audience of its ID tokens).
    pub client: String,
    /// The moto endpoint serving the pool.
    endpoint: String,
}

impl CognitoPool {
    pub async fn new(moto: &Moto) -> CognitoPool {
        let idp = aws_sdk_cognitoidentityprovider::Client::new(&moto.sdk_config().await);
        let attr = |name: &str, mutable: bool| {
            SchemaAttributeType::builder()
                .name(name)
                .attribute_data_type(AttributeDataType::String)
                .mutable(mutable)
                .build()
        };
        let id = idp
            .create_user_pool()
            .pool_name("configwatch")
            .schema(attr("tenantId", false))
            .schema(attr("role", true))
            .send()
            .await
            .unwrap()
            .user_pool
            .unwrap()
            .id
            .unwrap();
        let client = idp
            .create_user_pool_client()
            .user_pool_id(&id)
            .client_name("service")
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowAdminUserPasswordAuth)
            .explicit_auth_flows(ExplicitAuthFlowsType::AllowRefreshTokenAuth)
            .send()
            .await
            .unwrap()
            .user_pool_client
            .unwrap()
            .client_id
            .unwrap();
        CognitoPool {
            idp,
            id,
            client,
            endpoint: moto.endpoint.clone(),
        }
    }

    /// The pool's JWKS, as moto serves it.
    pub fn jwks_url(&self) -> String {
        format!("{}/{}/.well-known/jwks.json", self.endpoint, self.id)
    }

    /// The `iss` of the pool's tokens.
    pub fn issuer(&self) -> String {
        format!("https://cognito-idp.{REGION}.amazonaws.com/{}", self.id)
    }

    /// An admin-created user with these attributes, in these groups (created as
    /// needed).
    pub async fn user(&self, name: &str, attributes: &[(&str, &str)], groups: &[&str]) {
        let mut create = self
            .idp
            .admin_create_user()
            .user_pool_id(&self.id)
            .username(name)
            .message_action(MessageActionType::Suppress)
            .temporary_password("Temp-Passw0rd!");
        for (k, v) in attributes {
            create = create
                .user_attributes(AttributeType::builder().name(*k).value(*v).build().unwrap());
        }
        create.send().await.unwrap();
        self.idp
            .admin_set_user_password()
            .user_pool_id(&self.id)
            .username(name)
            .password(PASSWORD)
            .permanent(true)
            .send()
            .await
            .unwrap();
        for group in groups {
            // Already there for an earlier user: fine.
            let _ = self
                .idp
                .create_group()
                .user_pool_id(&self.id)
                .group_name(*group)
                .send()
                .await;
            self.idp
                .admin_add_user_to_group()
                .user_pool_id(&self.id)
                .username(name)
                .group_name(*group)
                .send()
                .await
                .unwrap();
        }
    }

    /// Signs in: (ID token, access token, refresh token).
    pub async fn sign_in_for_all(&self, name: &str) -> (String, String, String) {
        let auth = self
            .idp
            .admin_initiate_auth()
            .user_pool_id(&self.id)
            .client_id(&self.client)
            .auth_flow(AuthFlowType::AdminUserPasswordAuth)
            .auth_parameters("USERNAME", name)
            .auth_parameters("PASSWORD", PASSWORD)
            .send()
            .await
            .unwrap()
            .authentication_result
            .unwrap();
        (
            auth.id_token.unwrap(),
            auth.access_token.unwrap(),
            auth.refresh_token.unwrap(),
        )
    }

    /// Signs in: (ID token, access token).
    pub async fn sign_in(&self, name: &str) -> (String, String) {
        let (id, access, _) = self.sign_in_for_all(name).await;
        (id, access)
    }

    /// A refresh token of the user, as an operator gets one once for a relay.
    pub async fn refresh_token(&self, name: &str) -> String {
        self.sign_in_for_all(name).await.2
    }
}
