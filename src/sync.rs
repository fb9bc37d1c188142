//! One poison policy for every `std::sync::Mutex` in the daemon.
//!
//! A panic while a lock is held is caught (a tokio task ends, a provider's
//! panic is a failed call) and the daemon goes on serving. Every value
//! guarded here is whole between statements (an assignment, an insert, a
//! remove), so the next user takes it as it is. Skipping the operation
//! instead would lose an audit line, a page-cache claim or a status error
//! without a word.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
