//! What an upstream's answer means for the call that got it: done, retry (after how long,
//! spending an attempt or not, why), or give up. One pure function, used by the proxy, the
//! job dispatcher and the batch runner, so that a 429 is handled in one place.
//!
//! Deciding a retry is this module; doing it (sleeping, rescheduling in the store, answering
//! the caller) is the caller's.

use std::time::Duration;

use crate::signals::Signals;

/// What came back from one attempt.
#[derive(Debug, Clone, Copy)]
pub enum Attempted<'a> {
    /// The upstream answered with `status`; `signals` is what its headers and body said.
    Answered { status: u16, signals: &'a Signals },
    /// No answer: refused, reset, timed out (head or body).
    Unreachable,
}

/// The retry rule the call runs under.
#[derive(Debug, Clone, Copy)]
pub struct RetryRule<'a> {
    /// Attempts allowed in all (a throttled answer does not spend one).
    pub max_attempts: u32,
    /// Statuses retried besides throttled answers and 408 (e.g. 502, 503, 504).
    pub on_status: &'a [u16],
    /// The longest wait an answer may ask for before the call gives up instead.
    pub max_pause: Duration,
}

/// Why a call is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The upstream throttled it (429, or 403/503/529 with rate-limit evidence).
    Throttled,
    /// A retryable status (408 or one of the rule's `on_status`).
    Status(u16),
    /// No answer came back.
    Unreachable,
}

/// Why a call is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// A final answer: a status that retrying cannot change.
    Final(u16),
    /// Retryable, but every attempt is spent.
    AttemptsSpent(RetryReason),
    /// Throttled, and the answer asks to wait longer than `max_pause`.
    PauseTooLong(Duration),
}

/// The meaning of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answer.
    Done,
    /// Try again after `after`; `spends_attempt` is false for throttled answers (not the
    /// call's fault).
    Retry {
        after: Duration,
        spends_attempt: bool,
        why: RetryReason,
    },
    GiveUp(GiveUpReason),
}

/// Decides what `outcome` means for attempt `attempt` (1-based) under `rule`.
///
/// - `budget_pause`: how long the call's budget is paused after taking this answer into
///   account (the governor's pause); a throttled answer that names no time waits for it.
/// - `backoff`: the caller's wait before retrying a failed attempt (its own backoff policy).
pub fn verdict(
    outcome: Attempted<'_>,
    attempt: u32,
    rule: &RetryRule<'_>,
    budget_pause: Duration,
    backoff: Duration,
) -> Verdict {
    let why = match outcome {
        Attempted::Answered { signals, .. } if signals.throttled => {
            return match signals.asked_wait() {
                Some(asked) if asked > rule.max_pause => {
                    Verdict::GiveUp(GiveUpReason::PauseTooLong(asked))
                }
                asked => Verdict::Retry {
                    after: asked.unwrap_or(budget_pause),
                    spends_attempt: false,
                    why: RetryReason::Throttled,
                },
            };
        }
        Attempted::Answered { status, .. } if (200..300).contains(&status) => {
            return Verdict::Done;
        }
        Attempted::Answered { status, .. } if status == 408 || rule.on_status.contains(&status) => {
            RetryReason::Status(status)
        }
        Attempted::Answered { status, .. } => {
            return Verdict::GiveUp(GiveUpReason::Final(status));
        }
        Attempted::Unreachable => RetryReason::Unreachable,
    };
    if attempt >= rule.max_attempts {
        return Verdict::GiveUp(GiveUpReason::AttemptsSpent(why));
    }
    Verdict::Retry {
        after: backoff,
        spends_attempt: true,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: RetryRule<'static> = RetryRule {
        max_attempts: 3,
        on_status: &[502, 503],
        max_pause: Duration::from_secs(3600),
    };

    fn throttled(retry_after: Option<u64>) -> Signals {
        Signals {
            throttled: true,
            retry_after: retry_after.map(Duration::from_secs),
            limits: vec![],
            cost: None,
        }
    }

    fn answered(status: u16, signals: &Signals) -> Attempted<'_> {
        Attempted::Answered { status, signals }
    }

    const PAUSE: Duration = Duration::from_millis(1500);
    const BACKOFF: Duration = Duration::from_millis(200);

    #[test]
    fn a_throttled_answer_waits_for_its_time_or_the_budgets_pause_without_spending() {
        let s = throttled(Some(7));
        assert_eq!(
            verdict(answered(429, &s), 3, &RULE, PAUSE, BACKOFF),
            Verdict::Retry {
                after: Duration::from_secs(7),
                spends_attempt: false,
                why: RetryReason::Throttled
            }
        );
        // No Retry-After, no reset: the budget's pause, not a fixed second.
        let s = throttled(None);
        assert_eq!(
            verdict(answered(429, &s), 1, &RULE, PAUSE, BACKOFF),
            Verdict::Retry {
                after: PAUSE,
                spends_attempt: false,
                why: RetryReason::Throttled
            }
        );
    }

    #[test]
    fn a_pause_beyond_max_pause_gives_up() {
        let s = throttled(Some(34_000_000));
        assert_eq!(
            verdict(answered(429, &s), 1, &RULE, PAUSE, BACKOFF),
            Verdict::GiveUp(GiveUpReason::PauseTooLong(Duration::from_secs(34_000_000)))
        );
    }

    #[test]
    fn retryable_failures_spend_attempts_then_give_up() {
        let ok = Signals::default();
        assert_eq!(
            verdict(answered(200, &ok), 1, &RULE, PAUSE, BACKOFF),
            Verdict::Done
        );
        for (outcome, why) in [
            (answered(503, &ok), RetryReason::Status(503)),
            (answered(408, &ok), RetryReason::Status(408)),
            (Attempted::Unreachable, RetryReason::Unreachable),
        ] {
            assert_eq!(
                verdict(outcome, 2, &RULE, PAUSE, BACKOFF),
                Verdict::Retry {
                    after: BACKOFF,
                    spends_attempt: true,
                    why
                }
            );
            assert_eq!(
                verdict(outcome, 3, &RULE, PAUSE, BACKOFF),
                Verdict::GiveUp(GiveUpReason::AttemptsSpent(why))
            );
        }
        assert_eq!(
            verdict(answered(404, &ok), 1, &RULE, PAUSE, BACKOFF),
            Verdict::GiveUp(GiveUpReason::Final(404))
        );
        assert_eq!(
            verdict(answered(500, &ok), 1, &RULE, PAUSE, BACKOFF),
            Verdict::GiveUp(GiveUpReason::Final(500))
        );
    }
}
