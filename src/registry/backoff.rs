//! How long a failing credential rests before the provider is asked again.
//! Without a rest, every reader of a broken registry would run the provider
//! once more: a hanging helper would queue readers for minutes, and ECR
//! would throttle the whole account, healthy daemons included.

use std::time::Duration;

/// The rest after the first failure; it doubles with each further failure.
pub const FIRST: Duration = Duration::from_secs(1);
/// A provider that stays broken is still tried every few minutes, so a fix
/// is picked up without a `refresh` write.
pub const CAP: Duration = Duration::from_secs(5 * 60);
/// Up to this share of each rest is taken off at random, so daemons that
/// failed together (a provider outage) do not come back in step.
pub const JITTER: f64 = 0.2;

/// The rest after `failures` failures in a row; `jitter` in [0, 1] picks
/// where in the jitter band it falls. Never more than `CAP`.
pub fn delay(failures: u32, jitter: f64) -> Duration {
    // 2^9 s already passes the cap: larger shifts only risk overflow.
    let doublings = failures.saturating_sub(1).min(9);
    let full = FIRST.saturating_mul(1 << doublings).min(CAP);
    full.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_five_minutes() {
        let rests: Vec<u64> = (1..=12).map(|n| delay(n, 0.0).as_secs()).collect();
        assert_eq!(rests, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(delay(0, 0.0), FIRST, "no failure counted yet still rests");
        assert_eq!(delay(u32::MAX, 0.0), CAP);
    }

    #[test]
    fn jitter_only_shortens_and_stays_in_its_band() {
        for failures in [1, 3, 10, 40] {
            let full = delay(failures, 0.0);
            let shortest = delay(failures, 1.0);
            assert_eq!(shortest, full.mul_f64(1.0 - JITTER));
            assert!(delay(failures, 0.5) < full && delay(failures, 0.5) > shortest);
            assert_eq!(
                delay(failures, 7.0),
                shortest,
                "out-of-range jitter is clamped"
            );
            assert!(delay(failures, -1.0) <= CAP);
        }
    }
}
