//! The per-user send budget (SPEC §5: 10 sends/s with a burst of 30), shared by every
//! surface that sends (REST now, WebSocket too).
//!
//! A generic cell rate algorithm: each user has a "theoretical arrival time" that every
//! send pushes one emission interval into the future; a send that would push it more
//! than `burst` intervals ahead of now is refused, and the refusal says how long until
//! it would fit. One timestamp per active user; idle users are swept, so memory stays
//! bounded by the users active in the last few seconds.
//!
//! The budget is per node: a user whose sends are spread over N nodes by the load
//! balancer gets up to N times the rate. That bounds abuse without a cluster-wide
//! round trip on every send.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

pub struct SendLimiter {
    interval: Duration,
    /// How far ahead of now a user's arrival time may run: `burst` intervals.
    tolerance: Duration,
    users: Mutex<HashMap<Uuid, Instant>>,
}

/// Entries beyond this trigger a sweep of idle users.
const SWEEP_THRESHOLD: usize = 10_000;

impl SendLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        Self {
            interval,
            tolerance: interval * burst,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one send of `user`'s budget, or says how long until one is available.
    pub fn check(&self, user: Uuid) -> Result<(), Duration> {
        self.check_at(user, Instant::now())
    }

    fn check_at(&self, user: Uuid, now: Instant) -> Result<(), Duration> {
        let mut users = self.users.lock().expect("not poisoned");
        if users.len() > SWEEP_THRESHOLD {
            users.retain(|_, tat| *tat > now);
        }
        let tat = users.get(&user).copied().unwrap_or(now).max(now);
        let next = tat + self.interval;
        let ahead = next - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        users.insert(user, next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = SendLimiter::new(10.0, 30);
        let user = Uuid::new_v4();
        let start = Instant::now();
        for _ in 0..30 {
            assert!(limiter.check_at(user, start).is_ok());
        }
        let wait = limiter.check_at(user, start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(
            limiter
                .check_at(user, start + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            limiter
                .check_at(user, start + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn users_have_separate_budgets() {
        let limiter = SendLimiter::new(1.0, 1);
        let now = Instant::now();
        assert!(limiter.check_at(Uuid::new_v4(), now).is_ok());
        assert!(limiter.check_at(Uuid::new_v4(), now).is_ok());
    }
}
