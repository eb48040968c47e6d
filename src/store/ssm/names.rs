//! Parameter names: where a scope's parameters live under the root, the parameter
//! of a key, and the scopes and keys a parameter name stands for (for the SQS
//! source's events).
//!
//! Boundary: pure mapping with the key rules of [`crate::keys`]; a name never leaves
//! its scope's path.

use crate::keys::{self, PARAM_CONFIG};
use crate::model::Scope;
use crate::store::StoreError;

/// A parameter name mapped into configwatch: which scope's view holds it, and as
/// which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub scope: Scope,
    pub key: String,
}

/// `{root}/T` or `{root}/T/S`: where a scope's parameters live.
pub(super) fn scope_path(root: &str, scope: &Scope) -> String {
    match scope.service() {
        None => format!("{root}/{}", scope.tenant_id()),
        Some(service) => format!("{root}/{}/{service}", scope.tenant_id()),
    }
}

/// The parameter holding `key` of `scope`. Only valid `param_config_` keys map, so a
/// name never leaves the scope's path (keys cannot hold `..`, `%` or empty segments).
pub(super) fn parameter_name(root: &str, scope: &Scope, key: &str) -> Result<String, StoreError> {
    match keys::validate_key(key) {
        Ok(family) if family.prefix == PARAM_CONFIG.prefix => Ok(format!(
            "{}/{}",
            scope_path(root, scope),
            &key[PARAM_CONFIG.prefix.len()..]
        )),
        Ok(_) => Err(StoreError::Internal(format!(
            "key '{key}' is not a {}* key; the Parameter Store backend holds no other",
            PARAM_CONFIG.prefix
        ))),
        Err(e) => Err(StoreError::Internal(e.to_string())),
    }
}

/// The key a parameter `name` stands for under the scope path `path`, if any.
pub(super) fn key_under(path: &str, name: &str) -> Option<String> {
    let rest = name.strip_prefix(path)?.strip_prefix('/')?;
    let key = format!("{}{rest}", PARAM_CONFIG.prefix);
    match keys::validate_key(&key) {
        Ok(family) if family.prefix == PARAM_CONFIG.prefix => Some(key),
        _ => None,
    }
}

pub(super) fn locate(root: &str, name: &str) -> Vec<Located> {
    let Some(rest) = name.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return Vec::new();
    };
    let Some((tenant, _)) = rest.split_once('/') else {
        return Vec::new();
    };
    let Ok(scope) = Scope::tenant(tenant) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let tenant_path = scope_path(root, &scope);
    if let Some(key) = key_under(&tenant_path, name) {
        // The service-scoped view of the same parameter, if the path can name one.
        if let Some((service, _)) = key[PARAM_CONFIG.prefix.len()..].split_once('/')
            && let Ok(service_scope) = Scope::new(tenant, Some(service))
            && let Some(service_key) = key_under(&scope_path(root, &service_scope), name)
        {
            out.push(Located {
                scope: service_scope,
                key: service_key,
            });
        }
        out.insert(0, Located { scope, key });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/config-service";

    fn scope(t: &str) -> Scope {
        Scope::tenant(t).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn names_and_keys_map_both_ways_within_the_tenant() {
        let acme = scope("acme");
        assert_eq!(
            parameter_name(ROOT, &acme, "param_config_db/url"),
            Ok("/config-service/acme/db/url".into())
        );
        let svc = Scope::new("acme", Some("orders")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parameter_name(ROOT, &svc, "param_config_db"),
            Ok("/config-service/acme/orders/db".into())
        );
        for bad in [
            "param_config_../other/db",
            "param_config_a/../../other/x",
            "param_config_a%2F..%2Fother",
            "param_config_/abs",
            "param_config_a//b",
            "tenant_config_x",
        ] {
            assert!(parameter_name(ROOT, &acme, bad).is_err(), "{bad}");
        }

        assert_eq!(
            locate(ROOT, "/config-service/acme/db/url"),
            [
                Located {
                    scope: acme.clone(),
                    key: "param_config_db/url".into()
                },
                Located {
                    scope: Scope::new("acme", Some("db")).unwrap_or_else(|e| panic!("{e}")),
                    key: "param_config_url".into()
                },
            ]
        );
        assert_eq!(
            locate(ROOT, "/config-service/acme/flag"),
            [Located {
                scope: acme.clone(),
                key: "param_config_flag".into()
            }]
        );
        // Another tenant's parameter maps to that tenant, never to acme.
        let other = locate(ROOT, "/config-service/other/db/url");
        assert!(other.iter().all(|l| l.scope.tenant_id() == "other"));
        for outside in [
            "/elsewhere/acme/db/url",
            "/config-service-evil/acme/db",
            "/config-service",
            "/config-service/acme",
            "/config-service/acme/",
            "/config-service//db/url",
            "/config-service/../acme/db",
            "/config-service/acme/../other/db",
            "/config-service/acme/db/../../other/x",
            "/config-service/acme/a%2F..%2Fb",
            "/config-service/acme/db//url",
            "/config-service/.hidden/db",
            "config-service/acme/db",
            "",
        ] {
            assert!(locate(ROOT, outside).is_empty(), "{outside}");
        }
        let deep = format!("/config-service/acme/{}", ["a"; 13].join("/"));
        assert!(locate(ROOT, &deep).is_empty());
        // A load under one path keeps only names under it.
        assert_eq!(
            key_under("/config-service/acme", "/config-service/acme2/x"),
            None
        );
        assert_eq!(
            key_under("/config-service/acme", "/config-service/acme/x"),
            Some("param_config_x".into())
        );
    }
}
