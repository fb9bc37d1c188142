//! Pending uploads counted per uid by what holds them. A pending file lives
//! as long as anything keeps it (the table, a write handle), so the count
//! goes down when the last holder lets go, not when the table forgets it:
//! opening one name again and again cannot hide earlier uploads.

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Quota {
    held: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One pending upload of `uid`; dropping it gives the place back.
pub struct Slot {
    quota: Quota,
    uid: u32,
}

impl Quota {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        lock(&self.held)
    }

    /// A place for one more upload of `uid`, or how many it holds already.
    pub fn take(&self, uid: u32, limit: usize) -> Result<Slot, usize> {
        let mut held = self.held();
        let count = held.entry(uid).or_default();
        if *count >= limit {
            return Err(*count);
        }
        *count += 1;
        Ok(Slot {
            quota: self.clone(),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.quota.held();
        if let Some(count) = held.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_come_back_when_their_holder_lets_go() {
        let quota = Quota::default();
        let a = quota.take(1000, 2).expect("first");
        let _b = quota.take(1000, 2).expect("second");
        assert_eq!(quota.take(1000, 2).err(), Some(2));
        assert!(quota.take(1001, 2).is_ok(), "each uid has its own");
        drop(a);
        assert!(quota.take(1000, 2).is_ok());
    }
}
