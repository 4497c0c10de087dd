//! A TLS configuration re-made whenever its files change.
//!
//! The files are re-read on a timer rather than watched: a Kubernetes Secret volume rotates by
//! swapping a `..data` symlink, which inotify on the file names does not report, and a re-read
//! of three small files every few seconds costs nothing. The contents are compared, so an
//! unchanged file costs no rebuild; a change that does not build (a half-written rotation, a
//! key that does not match) keeps the last good configuration, is logged and counted, and is
//! tried again at the next change.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use super::material::Raw;
use super::{Result, TlsFiles, TlsStats};

/// Builds a configuration from the files' contents.
pub type Build<T> = fn(&TlsFiles, &Raw) -> Result<T>;

/// The current configuration, replaced in the background when the files change. Cheap to
/// clone; the re-read stops once every clone is gone.
pub struct Reloading<T> {
    current: Arc<RwLock<Arc<T>>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the configuration from `files` now (an error here is a start-up error) and
    /// re-reads them every `period` on the current Tokio runtime.
    pub fn start(
        files: TlsFiles,
        build: Build<T>,
        period: Duration,
        stats: TlsStats,
    ) -> Result<Self> {
        let raw = Raw::read_blocking(&files)?;
        let config = build(&files, &raw)?;
        let current = Arc::new(RwLock::new(Arc::new(config)));
        let weak = Arc::downgrade(&current);
        tokio::spawn(watch(
            weak,
            files,
            build,
            period.max(Duration::from_millis(10)),
            raw,
            stats,
        ));
        Ok(Self { current })
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole configuration (the writer only swaps an Arc).
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn watch<T>(
    weak: Weak<RwLock<Arc<T>>>,
    files: TlsFiles,
    build: Build<T>,
    period: Duration,
    mut last: Raw,
    stats: TlsStats,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(current) = weak.upgrade() else {
            return;
        };
        let raw = match Raw::read(&files).await {
            Ok(raw) => raw,
            // Mid-rotation a file may be missing for a moment: try again next time.
            Err(e) => {
                tracing::debug!(error = %e, "TLS files not readable; keeping the current ones");
                continue;
            }
        };
        if raw == last {
            continue;
        }
        match build(&files, &raw) {
            Ok(config) => {
                *current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                stats.reloaded(true);
                tracing::info!(cert = ?files.cert, ca = ?files.ca, "TLS certificate files changed; new connections use them");
            }
            Err(e) => {
                stats.reloaded(false);
                tracing::warn!(error = %e, "TLS certificate files changed but do not make a valid configuration; keeping the previous one");
            }
        }
        last = raw;
    }
}
