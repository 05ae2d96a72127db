//! The sign-in throttle's rule (SPEC §10): after five failed logins for a username, each
//! further attempt waits a delay that doubles from 1 s up to 15 minutes; a success resets
//! it, and the record is forgotten 15 minutes after the last failure.
//!
//! Every attempt is counted as a failure before the password is checked (the store then
//! writes it under the username's row lock), so a burst of concurrent guesses, on any
//! mix of nodes, is counted in full; a success clears the record afterwards.

use std::time::Duration;

use crate::store::credentials::FailedLogins;

/// Failures allowed before attempts have to wait.
pub const FREE_FAILURES: i32 = 5;
/// The longest wait, and how long failures are remembered.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// The record after one more attempt, or how long the caller must wait first.
pub fn count_attempt(
    previous: Option<FailedLogins>,
    now_ms: i64,
) -> Result<FailedLogins, Duration> {
    let forget_before = now_ms - MAX_WAIT.as_millis() as i64;
    let previous = previous.filter(|record| record.last_failure_ms >= forget_before);
    if let Some(retry_at) = previous.and_then(|record| record.retry_at_ms)
        && retry_at > now_ms
    {
        return Err(Duration::from_millis((retry_at - now_ms) as u64));
    }
    let failures = previous.map_or(0, |record| record.failures) + 1;
    let retry_at_ms = (failures >= FREE_FAILURES).then(|| {
        let doublings = (failures - FREE_FAILURES).min(20) as u32;
        let wait = Duration::from_secs(1 << doublings).min(MAX_WAIT);
        now_ms + wait.as_millis() as i64
    });
    Ok(FailedLogins {
        failures,
        last_failure_ms: now_ms,
        retry_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails `n` attempts in a row, each as soon as it is allowed; returns the record
    /// and the waits imposed.
    fn fail(n: usize) -> (Option<FailedLogins>, Vec<u64>) {
        let (mut record, mut now, mut waits) = (None, 1_000_000_000, Vec::new());
        for _ in 0..n {
            if let Err(wait) = count_attempt(record, now) {
                waits.push(wait.as_secs());
                now += wait.as_millis() as i64;
            }
            record = Some(count_attempt(record, now).unwrap());
        }
        (record, waits)
    }

    #[test]
    fn five_failures_are_free_then_the_wait_doubles_up_to_fifteen_minutes() {
        let (_, waits) = fail(20);
        assert_eq!(
            waits,
            [
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900, 900
            ]
        );
    }

    #[test]
    fn an_attempt_inside_the_wait_is_refused_and_changes_nothing() {
        let (record, _) = fail(6);
        let record = record.unwrap();
        let now = record.last_failure_ms + 500;
        assert_eq!(
            count_attempt(Some(record), now),
            Err(Duration::from_millis(1_500))
        );
    }

    #[test]
    fn failures_are_forgotten_fifteen_minutes_after_the_last() {
        let (record, _) = fail(12);
        let record = record.unwrap();
        let later = record.last_failure_ms + MAX_WAIT.as_millis() as i64 + 1;
        let next = count_attempt(Some(record), later).unwrap();
        assert_eq!(next.failures, 1);
        assert_eq!(next.retry_at_ms, None);
    }
}
