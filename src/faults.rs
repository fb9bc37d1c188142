//! Planned failures and delays for the fault-injecting store and registry
//! wrappers: a test says which calls of which operation fail, with what
//! error, or wait, and the wrappers ask before each call. Calls are counted
//! per operation from 1, so "the 3rd commit fails" is exact. A leaf.

use crate::error::{Error, Result};
use crate::sync::lock;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

enum Action {
    Fail(Error),
    Delay(Duration),
}

struct Rule<Op> {
    op: Op,
    /// The calls it applies to, by number, both ends included.
    first: u64,
    last: u64,
    action: Action,
}

struct Plan<Op> {
    calls: Vec<(Op, u64)>,
    rules: Vec<Rule<Op>>,
}

pub struct Faults<Op> {
    plan: Mutex<Plan<Op>>,
}

impl<Op: Copy + PartialEq + Debug + Send> Faults<Op> {
    /// No faults yet: every call goes through.
    pub fn new() -> Arc<Self> {
        Arc::new(Faults {
            plan: Mutex::new(Plan {
                calls: Vec::new(),
                rules: Vec::new(),
            }),
        })
    }

    fn plan(&self) -> MutexGuard<'_, Plan<Op>> {
        lock(&self.plan)
    }

    /// The calls of `op` numbered in `calls` (`3..=3`: the third; `..`:
    /// all) fail with `error`.
    pub fn fail(&self, op: Op, calls: impl RangeBounds<u64>, error: Error) {
        self.add(op, calls, Action::Fail(error));
    }

    /// The calls of `op` numbered in `calls` wait `delay` before they run.
    pub fn delay(&self, op: Op, calls: impl RangeBounds<u64>, delay: Duration) {
        self.add(op, calls, Action::Delay(delay));
    }

    fn add(&self, op: Op, calls: impl RangeBounds<u64>, action: Action) {
        let first = match calls.start_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n.saturating_add(1),
            Bound::Unbounded => 1,
        };
        let last = match calls.end_bound() {
            Bound::Included(n) => *n,
            Bound::Excluded(n) => n.saturating_sub(1),
            Bound::Unbounded => u64::MAX,
        };
        self.plan().rules.push(Rule {
            op,
            first,
            last,
            action,
        });
    }

    /// Drops every planned fault; the counts go on.
    pub fn clear(&self) {
        self.plan().rules.clear();
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Op) -> u64 {
        let plan = self.plan();
        plan.calls
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(0, |(_, n)| *n)
    }

    /// Counts a call of `op` and applies what the plan says of it: its
    /// delays, then its first failure.
    pub(crate) async fn enter(&self, op: Op) -> Result<()> {
        let (delay, failure) = {
            let mut plan = self.plan();
            let number = match plan.calls.iter_mut().find(|(o, _)| *o == op) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    plan.calls.push((op, 1));
                    1
                }
            };
            let applying = || {
                plan.rules
                    .iter()
                    .filter(move |r| r.op == op && (r.first..=r.last).contains(&number))
            };
            let delay: Duration = applying()
                .filter_map(|r| match r.action {
                    Action::Delay(d) => Some(d),
                    Action::Fail(_) => None,
                })
                .sum();
            let failure = applying().find_map(|r| match &r.action {
                Action::Fail(e) => Some(e.clone()),
                Action::Delay(_) => None,
            });
            (delay, failure)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_planned_calls_fail() {
        let faults = Faults::new();
        faults.fail("commit", 2..=2, Error::provider("second"));
        faults.fail("open", 3.., Error::provider("from the third"));
        assert!(faults.enter("commit").await.is_ok());
        assert_eq!(
            faults
                .enter("commit")
                .await
                .map_err(|e| e.message().to_string()),
            Err("second".to_string())
        );
        assert!(faults.enter("commit").await.is_ok());
        for _ in 0..2 {
            assert!(faults.enter("open").await.is_ok());
        }
        assert!(faults.enter("open").await.is_err());
        assert!(faults.enter("open").await.is_err());
        assert_eq!((faults.calls("commit"), faults.calls("open")), (3, 4));
        faults.clear();
        assert!(faults.enter("open").await.is_ok());
    }

    #[tokio::test]
    async fn a_delay_holds_the_call() {
        let faults = Faults::new();
        faults.delay("fetch", .., Duration::from_millis(50));
        let started = std::time::Instant::now();
        assert!(faults.enter("fetch").await.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
