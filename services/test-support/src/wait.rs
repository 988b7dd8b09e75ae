//! Waiting for a condition with a deadline, instead of sleep loops: the
//! wait ends as soon as the condition holds, and a timeout is an error that
//! says what was awaited and for how long.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// A wait ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct Timeout {
    /// What was awaited, as the caller named it.
    pub what: String,
    /// How long it waited.
    pub waited: Duration,
}

/// What a condition returns: `bool` (ready or not), or `Option<T>` (the
/// value it was waiting for).
pub trait Ready {
    /// What the wait returns once ready.
    type Value;
    /// `Some` once ready.
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Option<T> {
        self
    }
}

/// Call `f` every `poll` until it is ready (true, or `Some`), for at most
/// `limit`; `f` is called once more at the deadline so a slow poll cannot
/// lose the last chance. `what` names the condition in the error.
pub fn wait_until<R: Ready>(
    what: impl Display,
    limit: Duration,
    poll: Duration,
    mut f: impl FnMut() -> R,
) -> Result<R::Value, Timeout> {
    let start = Instant::now();
    loop {
        let expired = start.elapsed() >= limit;
        if let Some(v) = f().ready() {
            return Ok(v);
        }
        if expired {
            return Err(Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(poll.min(limit.saturating_sub(start.elapsed())));
    }
}

/// [`wait_until`] for an async condition, sleeping on tokio's timer so the
/// runtime keeps running whatever is awaited.
#[cfg(feature = "tokio")]
pub async fn wait_until_async<R, Fut>(
    what: impl Display,
    limit: Duration,
    poll: Duration,
    mut f: impl FnMut() -> Fut,
) -> Result<R::Value, Timeout>
where
    R: Ready,
    Fut: std::future::Future<Output = R>,
{
    let start = Instant::now();
    loop {
        let expired = start.elapsed() >= limit;
        if let Some(v) = f().await.ready() {
            return Ok(v);
        }
        if expired {
            return Err(Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(poll.min(limit.saturating_sub(start.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn returns_the_value_as_soon_as_ready() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), MS, || {
            n += 1;
            (n >= 3).then_some(n * 10)
        });
        assert_eq!(v, Ok(30));
    }

    #[test]
    fn times_out_naming_what_was_awaited() {
        let start = Instant::now();
        let Err(e) = wait_until("the moon", Duration::from_millis(50), MS, || false) else {
            panic!("a condition that never holds was met");
        };
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(e.what, "the moon");
        assert!(e.to_string().starts_with("timed out after"), "{e}");
        assert!(e.to_string().ends_with("waiting for the moon"), "{e}");
    }

    #[test]
    fn checks_once_more_at_the_deadline() {
        // A poll far longer than the limit: the second call, at the
        // deadline, is the one that sees the condition.
        let mut calls = 0;
        let r = wait_until(
            "second call",
            Duration::from_millis(20),
            Duration::from_secs(60),
            || {
                calls += 1;
                calls == 2
            },
        );
        assert_eq!(r, Ok(()));
    }

    #[tokio::test]
    async fn async_waits_on_the_runtime() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(7).await;
        });
        let v = wait_until_async("a message", Duration::from_secs(5), MS, || {
            let got = rx.try_recv().ok();
            async move { got }
        })
        .await;
        assert_eq!(v, Ok(7));
        let e =
            wait_until_async("nothing", Duration::from_millis(10), MS, || async { false }).await;
        assert!(e.is_err());
    }
}
