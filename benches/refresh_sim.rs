//! A fleet's ECR token refreshes over a simulated day: 10,000 nodes, each a
//! credfs daemon that fetched a 12-hour token at start and refreshes it with
//! the daemon's own schedule (`registry::refresh_delay`). Prints the peak
//! GetAuthorizationToken calls per second against the mean and against
//! ECR's documented limit (20 per second per account and region, bursts to
//! 200), for a fleet started together and one started over an hour, with the
//! schedule before this change (every refresh at half-life ± 10%) as the
//! baseline. No daemon runs: the schedule is the daemon's function, the
//! clock is simulated.

mod common;

use common::Jitter;
use credfs::registry::{Refresh, refresh_delay};
use std::time::{Duration, SystemTime};

const NODES: usize = 10_000;
const LIFE: Duration = Duration::from_secs(12 * 3600);
const DAY: usize = 86_400;
/// The windows the peak rate is read over: one second holds 0 to 7 calls at
/// these rates whatever the schedule (Poisson noise), so the peak "per
/// second" is the busiest minute's (and five minutes') mean.
const WINDOWS: [usize; 2] = [60, 300];
const ECR_RATE: f64 = 20.0;
const ECR_BURST: f64 = 200.0;
const SEEDS: u64 = 5;

#[derive(Clone, Copy)]
enum Schedule {
    /// Every refresh at half-life ± 10%: the daemon before the fleet
    /// simulation.
    HalfLifeOnly,
    /// The daemon's: the first refresh after a cold fetch anywhere in the
    /// first half of the life, later ones at half-life ± 10%.
    Daemon,
    /// The baseline: a fleet already in its steady state (each node's first
    /// refresh drawn from the renewal process's equilibrium), so its rate
    /// is flat and its peak is the noise of random arrivals alone.
    Stationary,
}

/// A draw from the forward recurrence time of refreshes every
/// half-life ± 10%: a length-biased interval, then a uniform point in it.
fn equilibrium_delay(jitter: &mut Jitter) -> f64 {
    let (short, long) = (0.4 * LIFE.as_secs_f64(), 0.6 * LIFE.as_secs_f64());
    let unit = |j: f64| (j + 1.0) / 2.0;
    let interval = (short * short + unit(jitter.next()) * (long * long - short * short)).sqrt();
    unit(jitter.next()) * interval
}

struct Day {
    cold: usize,
    refreshes: Vec<u32>,
}

/// Calls per simulated second over a day: each node fetches once in its
/// first `start_within` seconds, then refreshes as `schedule` says.
fn simulate(schedule: Schedule, start_within: f64, seed: u64) -> Day {
    let mut jitter = Jitter(seed);
    let mut refreshes = vec![0u32; DAY];
    let epoch = SystemTime::UNIX_EPOCH;
    for _ in 0..NODES {
        let mut at = (jitter.next() + 1.0) / 2.0 * start_within;
        let mut after = match schedule {
            Schedule::HalfLifeOnly => Refresh::AfterRefresh,
            Schedule::Daemon => Refresh::AfterColdFetch,
            Schedule::Stationary => {
                at += equilibrium_delay(&mut jitter);
                refreshes[at as usize] += 1;
                Refresh::AfterRefresh
            }
        };
        loop {
            let fetched = epoch + Duration::from_secs_f64(at);
            at += refresh_delay(fetched, fetched + LIFE, after, jitter.next()).as_secs_f64();
            after = Refresh::AfterRefresh;
            if at >= DAY as f64 {
                break;
            }
            refreshes[at as usize] += 1;
        }
    }
    Day {
        cold: NODES,
        refreshes,
    }
}

struct Figures {
    mean: f64,
    /// The peak rate over each of `WINDOWS`.
    peaks: [f64; 2],
    peak_second: u32,
    throttled: f64,
}

fn figures(day: &Day) -> Figures {
    let total: u64 = day.refreshes.iter().map(|&c| u64::from(c)).sum();
    let mean = total as f64 / DAY as f64;
    let peaks = WINDOWS.map(|window| {
        day.refreshes
            .chunks(window)
            .map(|w| w.iter().sum::<u32>() as f64 / w.len() as f64)
            .fold(0.0, f64::max)
    });
    // ECR's token bucket: 200 credits, 20 back per second.
    let mut credits = ECR_BURST;
    let mut throttled = 0.0;
    for &calls in &day.refreshes {
        credits = (credits + ECR_RATE).min(ECR_BURST);
        let calls = f64::from(calls);
        throttled += (calls - credits).max(0.0);
        credits = (credits - calls).max(0.0);
    }
    Figures {
        mean,
        peaks,
        peak_second: day.refreshes.iter().copied().max().unwrap_or(0),
        throttled,
    }
}

fn main() {
    println!(
        "refresh_sim: {NODES} nodes, {}-hour ECR tokens, one simulated day after the fleet starts; worst of {SEEDS} seeds",
        LIFE.as_secs() / 3600
    );
    println!(
        "{:<38} {:>6} {:>7} {:>16} {:>16} {:>6} {:>8} {:>10}",
        "fleet start, refresh schedule",
        "calls",
        "mean/s",
        "peak/s 1 min",
        "peak/s 5 min",
        "1 s",
        "vs 20/s",
        "target"
    );
    for (start, within) in [("1 min", 60.0), ("1 h", 3600.0)] {
        for (name, schedule) in [
            ("stationary (baseline)", Schedule::Stationary),
            ("half-life ±10% (before)", Schedule::HalfLifeOnly),
            ("5-50%, then ±10% (daemon)", Schedule::Daemon),
        ] {
            let days: Vec<Figures> = (1..=SEEDS)
                .map(|seed| figures(&simulate(schedule, within, seed)))
                .collect();
            let worst = days
                .iter()
                .max_by(|a, b| (a.peaks[0] / a.mean).total_cmp(&(b.peaks[0] / b.mean)))
                .expect("seeds");
            let target = if matches!(schedule, Schedule::Daemon) {
                "<= 2x mean"
            } else {
                ""
            };
            let [minute, five] = worst.peaks;
            println!(
                "{:<38} {:>6.0} {:>7.3} {:>7.3} ({:>4.2}x) {:>7.3} ({:>4.2}x) {:>6} {:>7.3}x {:>10}",
                format!("{start}, {name}"),
                worst.mean * DAY as f64,
                worst.mean,
                minute,
                minute / worst.mean,
                five,
                five / worst.mean,
                worst.peak_second,
                minute / ECR_RATE,
                target
            );
            assert_eq!(
                worst.throttled, 0.0,
                "refreshes alone never hit ECR's limit"
            );
        }
    }
    let cold = simulate(Schedule::Daemon, 60.0, 1).cold;
    println!(
        "cold fetches of a fleet started within 1 min: {cold} in 60 s ({:.0}/s, {:.1}x ECR's 20/s); ECR's bucket (200 + 20/s) admits {:.0} in that minute, the rest are throttled and retried with the daemon's backoff",
        cold as f64 / 60.0,
        cold as f64 / 60.0 / ECR_RATE,
        ECR_BURST + ECR_RATE * 60.0
    );
}
