//! Refused tokens, counted by reason: one counter per [`AuthError`] variant, a
//! bounded set (no caller input in the reason). Counts; knows nothing of who
//! reads the counts.

use std::sync::atomic::{AtomicU64, Ordering};

use super::AuthError;

/// Every reason a refusal may be counted under, in [`AuthError::reason`]'s terms.
pub const REASONS: [&str; 18] = [
    "missing",
    "not_bearer",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "algorithm",
    "issuer",
    "issuer_missing",
    "critical_extension",
    "audience",
    "unknown_key",
    "missing_tenant",
    "bad_claim",
    "unknown_role",
    "relay_from_attribute",
    "token_use",
    "keys_unavailable",
];

impl AuthError {
    /// The refusal's reason as a short, fixed name (one of [`REASONS`]).
    pub fn reason(&self) -> &'static str {
        REASONS[self.reason_index()]
    }

    /// The position of the refusal's reason in [`REASONS`].
    fn reason_index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::NotBearer => 1,
            AuthError::Malformed(_) => 2,
            AuthError::Expired => 3,
            AuthError::NotYetValid => 4,
            AuthError::BadSignature => 5,
            AuthError::Algorithm { .. } => 6,
            AuthError::Issuer => 7,
            AuthError::IssuerMissing => 8,
            AuthError::CriticalExtension => 9,
            AuthError::Audience => 10,
            AuthError::UnknownKey(_) => 11,
            AuthError::MissingTenant(_) => 12,
            AuthError::BadClaim { .. } => 13,
            AuthError::UnknownRole(_) => 14,
            AuthError::RelayFromAttribute(_) => 15,
            AuthError::TokenUse { .. } => 16,
            AuthError::KeysUnavailable(_) => 17,
        }
    }
}

/// Refusals so far, by reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; REASONS.len()],
}

impl Refusals {
    /// Counts one refusal of `error`.
    pub fn count(&self, error: &AuthError) {
        self.counts[error.reason_index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Each reason with its count, in [`REASONS`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(&self.counts)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_counted_under_its_own_reason() {
        let refusals = Refusals::default();
        refusals.count(&AuthError::Expired);
        refusals.count(&AuthError::Malformed("x".into()));
        refusals.count(&AuthError::Malformed("y".into()));
        let counts = refusals.snapshot();
        assert!(counts.contains(&("expired", 1)));
        assert!(counts.contains(&("malformed", 2)));
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }
}
