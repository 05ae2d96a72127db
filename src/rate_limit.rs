//! Budgets for what clients do (SPEC §5, §10 and §18): sends per user (10/s, burst 30);
//! edits, deletes, reactions, joins, leaves and member changes per user (20/s, burst
//! 60); room creation per user (30 a minute); subscribes per socket (100/s); typing
//! events per socket (5/s); searches (5/s) and read watermark moves (20/s) per user. The
//! use cases spend them, whichever surface the action came through.
//!
//! Each [`Budget`] is governor's keyed generic cell rate algorithm: one timestamp per
//! active key in a sharded map, so keys on different shards never wait for each other,
//! and a refusal says how long until the next action would fit. Keys idle long enough
//! to have their whole burst back are dropped every [`SWEEP_EVERY`] checks, so memory
//! stays bounded by the keys active in the last moments (one shard locked at a time).
//!
//! Budgets are per node: a user whose requests are spread over N nodes by the load
//! balancer gets up to N times the rate. That bounds abuse without a cluster-wide
//! round trip on every action.

use std::{
    hash::Hash,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::keyed::DashMapStateStore,
};
use uuid::Uuid;

/// Checks between two sweeps of idle users.
const SWEEP_EVERY: u64 = 65_536;

/// A rate with a burst, per key (a user, a socket).
pub struct Budget<K: Hash + Eq + Clone = Uuid, C: Clock = DefaultClock> {
    keys: RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    /// Checks so far, to sweep every [`SWEEP_EVERY`].
    checks: AtomicU64,
}

/// `per_second` actions a second after a burst of `burst`: the fastest rate governor can
/// keep (one a nanosecond) bounds a configured rate above it.
fn quota(per_second: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period).expect("a period of at least 1 ns");
    quota.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl<K: Hash + Eq + Clone> Budget<K> {
    /// `per_second` actions a second per key, after a burst of `burst`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> Budget<K, C> {
    fn with_clock(per_second: f64, burst: u32, clock: C) -> Self {
        Self {
            keys: RateLimiter::dashmap_with_clock(quota(per_second, burst), clock),
            checks: AtomicU64::new(0),
        }
    }

    /// Spends one action of `key`'s budget, or says how long until one is available.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.keys.retain_recent();
            self.keys.shrink_to_fit();
        }
        self.keys
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.keys.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let clock = FakeRelativeClock::default();
        let limiter = Budget::<Uuid, _>::with_clock(10.0, 30, clock.clone());
        let user = Uuid::new_v4();
        for _ in 0..30 {
            assert!(limiter.check(user).is_ok());
        }
        let wait = limiter.check(user).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check(user).is_ok());
        assert!(limiter.check(user).is_err());
    }

    #[test]
    fn users_have_separate_budgets() {
        let limiter = Budget::<Uuid, _>::with_clock(1.0, 1, FakeRelativeClock::default());
        assert!(limiter.check(Uuid::new_v4()).is_ok());
        assert!(limiter.check(Uuid::new_v4()).is_ok());
    }

    #[test]
    fn idle_users_are_swept_and_active_ones_kept() {
        let clock = FakeRelativeClock::default();
        let limiter = Budget::<Uuid, _>::with_clock(10.0, 1, clock.clone());
        let active = Uuid::new_v4();
        for _ in 0..1000 {
            let _ = limiter.check(Uuid::new_v4());
        }
        // A second later the thousand have their budgets back; `active` spends its own.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check(active).is_ok());
        let before_sweep = SWEEP_EVERY - 1 - limiter.checks.load(Ordering::Relaxed);
        for _ in 0..before_sweep {
            let _ = limiter.check(active);
        }
        assert!(limiter.keys.len() > 1000);
        let _ = limiter.check(active);
        assert_eq!(limiter.keys.len(), 1, "only the active user is left");
        assert!(
            limiter.check(active).is_err(),
            "and its spent budget with it"
        );
    }

    #[test]
    fn a_rate_beyond_one_a_nanosecond_is_that_rate_not_a_panic() {
        let limiter = Budget::<Uuid, _>::with_clock(1e12, 1_000_000, FakeRelativeClock::default());
        assert!(limiter.check(Uuid::new_v4()).is_ok());
    }
}
