//! A fair pool of slots for work whose cost a caller chooses (a Watch's initial
//! diff against 100,000 versions): at most `slots` run at once, the rest wait in
//! line, and one tenant holds at most half of the slots (at least one), so a tenant
//! that floods the server only queues behind itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The pool. Cloning shares it.
#[derive(Clone, Debug)]
pub struct FairPool {
    all: Arc<Semaphore>,
    per_tenant: usize,
    tenants: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _all: OwnedSemaphorePermit,
    _tenant: OwnedSemaphorePermit,
    tenant: String,
    pool: FairPool,
}

impl FairPool {
    /// A pool of `slots` (at least one).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        FairPool {
            all: Arc::new(Semaphore::new(slots)),
            per_tenant: (slots / 2).max(1),
            tenants: Arc::default(),
        }
    }

    /// Waits for a slot for `tenant`: first one of the tenant's own, then one of
    /// the pool's, so a tenant's queue never holds a slot another tenant could use.
    /// `None` only if the pool was closed, which it never is.
    pub async fn acquire(&self, tenant: &str) -> Option<Slot> {
        let own = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        let tenant_permit = own.acquire_owned().await.ok()?;
        let all_permit = self.all.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _all: all_permit,
            _tenant: tenant_permit,
            tenant: tenant.to_owned(),
            pool: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Forget a tenant's semaphore once nobody else holds or waits for it: the
        // map and this slot's permit (released after this runs) are then its only
        // references (every holder's permit and every waiter holds one too).
        let mut tenants = self.pool.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sem) = tenants.get(&self.tenant)
            && Arc::strong_count(sem) == 2
        {
            tenants.remove(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_tenant_holds_at_most_half_and_others_still_get_in() {
        let pool = FairPool::new(4);
        let a1 = pool.acquire("a").await;
        let a2 = pool.acquire("a").await;
        assert!(a1.is_some() && a2.is_some());
        // A third slot for "a" waits even though the pool has two free.
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire("a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let b1 = pool.acquire("b").await;
        let b2 = pool.acquire("b").await;
        drop(a1);
        let a3 = waiting.await.ok().flatten();
        assert!(a3.is_some());
        drop((a2, a3, b1, b2));
        assert!(pool.tenants.lock().map(|t| t.is_empty()).unwrap_or(false));
    }
}
