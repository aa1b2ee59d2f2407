//! Waiting for something that should happen soon, without sleeping for a
//! guessed time: poll it with a deadline, and fail naming what was awaited
//! and the last thing seen.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks again.
const EVERY: Duration = Duration::from_millis(20);

/// Calls `probe` until it returns `Ok`, every 20 ms, for at most `within`
/// (a first call always happens); panics naming `what` and the last
/// `Err` seen when the deadline passes.
///
/// ```ignore
/// let page = eventually("the counter moved", PATIENCE, || async {
///     let m = scrape::metrics(admin).await;
///     if m.sum("x_total", &[]) > 0.0 { Ok(m) } else { Err(m.text) }
/// })
/// .await;
/// ```
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(found) => return found,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("not within {within:?}: {what}; last seen:\n{last}");
        }
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_success_and_fails_with_the_last_value() {
        let calls = AtomicU32::new(0);
        let n = eventually("the third call", Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::SeqCst) + 1 {
                3 => Ok(3),
                n => Err(format!("call {n}")),
            }
        })
        .await;
        assert_eq!(n, 3);

        let failed = tokio::spawn(async {
            eventually::<(), _, _>("never", Duration::from_millis(60), || async {
                Err("still no".to_string())
            })
            .await
        })
        .await
        .unwrap_err();
        let message = *failed.into_panic().downcast::<String>().unwrap();
        assert!(
            message.contains("not within 60ms: never") && message.contains("still no"),
            "{message}"
        );
    }
}
