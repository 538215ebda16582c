//! The upstream timeout of each call, on timers kept for the next call on the same thread.
//!
//! A new tokio timer is registered in the timer wheel, under its lock, when first polled, and
//! removed again under the lock when dropped: twice per call. A kept timer that is still
//! registered moves to a later deadline with one atomic compare-and-swap; it is left in the
//! wheel at its old deadline, where the driver finds it has moved (once per timeout, not per
//! call). A kept timer nobody reuses ends at its last deadline and wakes the task that last
//! polled it, for nothing (once; on paused time, tokio's clock may advance to it).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Timers kept per thread: as many as calls that thread has in flight at its busiest, up to
/// this.
const KEPT_PER_THREAD: usize = 64;

/// The timers a thread keeps, and for whom: a timer belongs to its runtime's driver, so
/// timers are only reused by the [`Timers`] (one per server) that made them.
struct Kept {
    owner: u64,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static KEPT: RefCell<Kept> = const {
        RefCell::new(Kept {
            owner: 0,
            timers: Vec::new(),
        })
    };
}

/// Hands out call timers (one per server; see the module's comment).
#[derive(Clone, Debug)]
pub(crate) struct Timers {
    id: u64,
}

impl Timers {
    pub fn new() -> Timers {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Timers {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A timer that ends at `deadline`.
    pub fn until(&self, deadline: Instant) -> CallTimer {
        let kept = KEPT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.owner != self.id {
                kept.timers.clear();
                kept.owner = self.id;
            }
            kept.timers.pop()
        });
        let sleep = match kept {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        CallTimer {
            sleep: Some(sleep),
            owner: self.id,
        }
    }
}

/// One call's timer: kept by its thread when dropped (at the end of [`CallTimer::limit`]).
pub(crate) struct CallTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    owner: u64,
}

/// The call did not end before its timer.
#[derive(Debug)]
pub(crate) struct Elapsed;

impl CallTimer {
    /// `future`'s output, or [`Elapsed`] once the timer ends first.
    pub async fn limit<F: Future>(mut self, future: F) -> Result<F::Output, Elapsed> {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            match self
                .sleep
                .as_mut()
                .expect("there until dropped")
                .as_mut()
                .poll(cx)
            {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        // `try_with`: a thread being torn down keeps nothing.
        let _ = KEPT.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut() {
                if kept.owner == self.owner && kept.timers.len() < KEPT_PER_THREAD {
                    kept.timers.push(sleep);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A kept timer ends at its new deadline, not its old one, and a call that ends first
    /// is not cut; on paused time, so no real time passes.
    #[tokio::test(start_paused = true)]
    async fn kept_timers_end_at_their_new_deadline() {
        let timers = Timers::new();
        let start = Instant::now();
        let first = timers.until(start + Duration::from_secs(1));
        assert!(first.limit(std::future::ready(7)).await.is_ok());
        let kept = || KEPT.with(|k| k.borrow().timers.len());
        assert_eq!(kept(), 1);
        // The kept timer, moved later: the call ends before it.
        let second = timers.until(start + Duration::from_secs(5));
        assert_eq!(kept(), 0, "the kept timer is reused");
        let done = second
            .limit(tokio::time::sleep(Duration::from_secs(3)))
            .await;
        assert!(done.is_ok());
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        // And a call that outlasts it is cut at its deadline (moved earlier this time).
        let third = timers.until(Instant::now() + Duration::from_secs(1));
        let cut = third
            .limit(tokio::time::sleep(Duration::from_secs(60)))
            .await;
        assert!(cut.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        // Another server's calls do not take this one's timers: they are let go.
        assert_eq!(kept(), 1);
        let (a, b) = (timers.until(Instant::now()), timers.until(Instant::now()));
        drop((a, b));
        assert_eq!(kept(), 2);
        let other = Timers::new();
        let call = other.until(Instant::now() + Duration::from_secs(1));
        assert_eq!(
            kept(),
            0,
            "none taken and one left: the other server's are let go"
        );
        assert_eq!(KEPT.with(|k| k.borrow().owner), other.id);
        drop(call);
        assert_eq!(kept(), 1);
    }
}
