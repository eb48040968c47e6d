//! Who may do what: the scope a call acts on (the token's, or for a relay the one
//! it names), the role a write needs, and what history records of a write's caller.
//!
//! Boundary: reads the [`Identity`] the auth layer attached; knows no store and no
//! hub.

use tonic::{Request, Status};

use crate::auth::Identity;
use crate::model::Scope;
use crate::store::history::{Audit, validate_reason};

/// The caller, and the scope the request acts on: the token's own, or for a relay
/// the tenant (and service) the request names. Naming another tenant or service is
/// refused otherwise.
pub(super) fn caller<T>(
    request: &Request<T>,
    requested_tenant: &str,
    requested_service: &str,
) -> Result<(Identity, Scope), Status> {
    let id = request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))?;
    let scope = match (&id.scope, requested_tenant) {
        (_, named) if id.role.crosses_tenants() && !named.is_empty() => {
            let service = Some(requested_service).filter(|s| !s.is_empty());
            return Ok((id, Scope::new(named, service)?));
        }
        (Some(own), "") => own.clone(),
        (Some(own), named) if named == own.tenant_id() => own.clone(),
        (None, _) => {
            return Err(Status::invalid_argument(
                "this token names no tenant: set the request's tenant field",
            ));
        }
        (Some(own), named) => {
            return Err(Status::permission_denied(format!(
                "request names tenant '{named}' but the token is for tenant '{}'; the tenant always comes from the token",
                own.tenant_id()
            )));
        }
    };
    match (scope.service(), requested_service) {
        (_, "") => {}
        (Some(own), named) if named == own => {}
        (Some(own), named) => {
            return Err(Status::permission_denied(format!(
                "request names service '{named}' but the token is for service '{own}'; the service always comes from the token"
            )));
        }
        (None, named) => {
            return Err(Status::permission_denied(format!(
                "request names service '{named}' but the token is for the tenant-wide configuration only; leave service empty"
            )));
        }
    }
    Ok((id, scope))
}

/// What history records of a write: the caller's subject and app client (never
/// the token), the instance that accepted it, and the request's reason (checked:
/// INVALID_ARGUMENT naming the limit).
pub(super) fn audit_of(id: &Identity, instance: &str, reason: &str) -> Result<Audit, Status> {
    let reason =
        validate_reason(reason).map_err(|e| Status::invalid_argument(format!("reason: {e}")))?;
    Ok(Audit {
        subject: id.subject.clone(),
        client_id: id.client_id.clone(),
        instance: instance.to_owned(),
        reason,
    })
}

pub(super) fn require_writer(id: &Identity) -> Result<(), Status> {
    if id.role.can_write() {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "role '{}' may not write; Put and Delete need the writer or admin role",
            id.role.as_str()
        )))
    }
}
