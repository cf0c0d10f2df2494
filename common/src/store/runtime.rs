//! The small runtime an async client blocks on behind the synchronous
//! store traits (see the module doc of `store`).

use std::future::Future;

/// A small tokio runtime (two worker threads, which drive the connections)
/// that may be dropped anywhere (it shuts down in the background) and
/// blocked on from plain threads, several at once: format 3 fetches and
/// uploads objects on several threads, and a current-thread runtime would
/// serve them one at a time.
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub(crate) fn new() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-store-io")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    /// Runs `future` to completion on this thread: for the store traits'
    /// calls, which the agent makes on its sync thread and the publisher
    /// from `main`, never from async code.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// Runs `future` to completion from any thread, within another runtime
    /// too (on a scoped thread of its own): for opening a store, which the
    /// agent does in its async `run`.
    pub(crate) fn block_on_anywhere<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        let rt = self.runtime();
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(future);
        }
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs a read of up to `bytes` of `key` as [`Runtime::block_on`]
    /// does, given up after `deadline` (if any) plus a second per
    /// [`FLOOR_RATE`] bytes, however the store trickles its answer: the
    /// per-read timeouts end only a read that moves nothing at all, and a
    /// large bundle on a slow link still arrives.
    pub(crate) fn read<T>(
        &self,
        key: &str,
        deadline: Option<std::time::Duration>,
        bytes: u64,
        future: impl Future<Output = Result<T, super::StoreError>>,
    ) -> Result<T, super::StoreError> {
        let Some(deadline) = deadline else {
            return self.block_on(future);
        };
        let deadline = deadline.saturating_add(std::time::Duration::from_secs(bytes / FLOOR_RATE));
        self.block_on(async {
            tokio::time::timeout(deadline, future)
                .await
                .unwrap_or_else(|_| {
                    Err(super::StoreError::Transient {
                        key: key.to_owned(),
                        source: format!(
                            "no complete answer within {}s (twice check_timeout, and a second per 256 KiB); given up, to be tried again",
                            deadline.as_secs()
                        )
                        .into(),
                    })
                })
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        match &self.0 {
            Some(rt) => rt,
            None => unreachable!("the runtime is only taken by drop"),
        }
    }
}

/// The slowest transfer a read's deadline allows for, in bytes per second.
const FLOOR_RATE: u64 = 256 << 10;

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
