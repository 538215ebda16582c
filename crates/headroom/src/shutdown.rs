//! Stopping cleanly: after SIGTERM or SIGINT the server stops accepting, lets in-flight
//! requests, job attempts and batch chunks finish within `[server] shutdown_grace`, and the
//! background loops take no new work. What is still running when the grace ends is left to
//! the next start (a job left `running` goes again, as after a crash).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// The server's stop signal and its count of work in flight. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    stopping: Arc<watch::Sender<bool>>,
    began: Arc<std::sync::OnceLock<tokio::time::Instant>>,
    in_flight: Arc<(AtomicUsize, Notify)>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            stopping: Arc::new(watch::channel(false).0),
            began: Arc::default(),
            in_flight: Arc::new((AtomicUsize::new(0), Notify::new())),
        }
    }
}

/// One piece of work in flight (a job attempt, a batch chunk, a callback delivery); the
/// drain waits for it until it is dropped.
pub struct Working(Arc<(AtomicUsize, Notify)>);

impl Drop for Working {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}

impl Shutdown {
    /// Asks every loop to take no new work.
    pub fn begin(&self) {
        let _ = self.began.set(tokio::time::Instant::now());
        self.stopping.send_replace(true);
    }

    /// What is left of `grace` counted from when the stop began.
    pub fn grace_left(&self, grace: Duration) -> Duration {
        match self.began.get() {
            Some(began) => grace.saturating_sub(began.elapsed()),
            None => grace,
        }
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once a stop has begun.
    pub async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Counts one piece of work until the returned guard is dropped.
    pub fn working(&self) -> Working {
        self.in_flight.0.fetch_add(1, Ordering::AcqRel);
        Working(Arc::clone(&self.in_flight))
    }

    /// Waits up to `grace` for the work in flight to finish; returns how much is left.
    pub async fn drain(&self, grace: Duration) -> usize {
        let left = || self.in_flight.0.load(Ordering::Acquire);
        let _ = tokio::time::timeout(grace, async {
            loop {
                let notified = self.in_flight.1.notified();
                if left() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
        left()
    }
}

/// Resolves on SIGTERM (how systemd, Docker and Kubernetes stop a service) or SIGINT (Ctrl-C),
/// with the signal's name.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server cleanly");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_work_up_to_the_grace() {
        let shutdown = Shutdown::default();
        let first = shutdown.working();
        let second = shutdown.working();
        shutdown.begin();
        assert!(shutdown.is_stopping());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(first);
        });
        // One piece finishes within the grace, the other never does.
        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, 1);
        drop(second);
        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, 0);
    }
}
