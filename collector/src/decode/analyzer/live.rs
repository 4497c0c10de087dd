//! Follows `clovisor_proto_cfg` (through the live configuration, which `PUBLISH
//! clovisor_proto_plugin_cfg_chan <protocol>` refreshes at once) and keeps [`Analyzers`] in
//! step with it: each entry `protocol → value` runs the module the value names; an entry that
//! goes away unloads its analyzer; a module that cannot be read or does not load is rejected
//! (`clovisor_config_rejected_total{key="clovisor_proto_cfg",reason="invalid_module"}`, a log line) and the version
//! already running, if any, stays.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use base64::Engine as _;
use clovisor_config::source::describe_analyzer as describe;
use clovisor_config::{keys, ConfigMetrics, LiveConfig};
use tokio::sync::watch;

use super::runtime::MAX_MODULE_BYTES;
use super::{digest, Analyzers, Loaded};

/// Why a `clovisor_proto_cfg` value gives no module.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// The module is larger than allowed.
    #[error("module of {len} bytes exceeds the {MAX_MODULE_BYTES}-byte limit")]
    TooLarge {
        /// Its size.
        len: u64,
    },
    /// Neither an absolute path nor base64.
    #[error("neither an absolute path nor a base64-encoded module: {0}")]
    NotBase64(base64::DecodeError),
}

/// The module a `clovisor_proto_cfg` value names: an absolute path (`/…`) the collector reads,
/// or the module itself, base64-encoded (standard alphabet, padded).
pub async fn module_bytes(value: &str) -> Result<Vec<u8>, SourceError> {
    if value.starts_with('/') {
        let path = Path::new(value);
        let read_err = |source| SourceError::Read {
            path: value.to_owned(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(read_err)?;
        if !meta.is_file() {
            return Err(SourceError::NotAFile {
                path: value.to_owned(),
            });
        }
        if meta.len() > MAX_MODULE_BYTES as u64 {
            return Err(SourceError::TooLarge { len: meta.len() });
        }
        let bytes = tokio::fs::read(path).await.map_err(read_err)?;
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(SourceError::TooLarge {
                len: bytes.len() as u64,
            });
        }
        return Ok(bytes);
    }
    // 4 base64 characters per 3 bytes: anything longer decodes past the cap.
    let max_chars = MAX_MODULE_BYTES.div_ceil(3).saturating_mul(4);
    if value.len() > max_chars {
        return Err(SourceError::TooLarge {
            len: (value.len() as u64).saturating_mul(3) / 4,
        });
    }
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(SourceError::NotBase64)
}

/// Applies `proto_cfg` to `analyzers`. `rejected` remembers the module digest each name was
/// last rejected for, so a bad module is counted once, not on every reload.
pub async fn apply(
    analyzers: &Analyzers,
    proto_cfg: &BTreeMap<String, String>,
    config_metrics: Option<&ConfigMetrics>,
    rejected: &mut HashMap<String, u64>,
) {
    let metrics = analyzers.metrics().clone();
    for (name, value) in proto_cfg {
        let outcome = match module_bytes(value).await {
            Ok(bytes) => {
                let d = digest(&bytes);
                if rejected.get(name) == Some(&d) {
                    continue;
                }
                // Compiling a large module takes a while: not on an async worker.
                let (set, n) = (analyzers.clone(), name.clone());
                match tokio::task::spawn_blocking(move || set.load(&n, &bytes)).await {
                    Ok(Ok(loaded)) => Ok((loaded, d)),
                    Ok(Err(e)) => Err((e.to_string(), Some(d))),
                    Err(e) => Err((format!("loading stopped: {e}"), Some(d))),
                }
            }
            Err(e) => Err((e.to_string(), None)),
        };
        match outcome {
            Ok((Loaded::Unchanged, _)) => {}
            Ok((loaded, _)) => {
                rejected.remove(name);
                let (what, label) = match loaded {
                    Loaded::New => ("analyzer loaded", "loaded"),
                    _ => (
                        "analyzer replaced; flows take the new version at their next exchange",
                        "replaced",
                    ),
                };
                let a = analyzers.get(name);
                tracing::info!(
                    analyzer = %name,
                    module = %describe(value),
                    port = ?a.as_ref().and_then(|a| a.port()),
                    "{what}"
                );
                metrics.load(name, label);
            }
            Err((reason, d)) => {
                // A module read but refused is remembered by its digest (and skipped above
                // until it changes); one that cannot be read is counted at each reload.
                if let Some(d) = d {
                    rejected.insert(name.clone(), d);
                }
                let running = analyzers.get(name).is_some();
                tracing::warn!(
                    key = keys::PROTO_CFG,
                    analyzer = %name,
                    module = %describe(value),
                    %reason,
                    previous_version_kept = running,
                    "analyzer rejected"
                );
                metrics.load(name, "rejected");
                if let Some(m) = config_metrics {
                    m.reject(keys::PROTO_CFG);
                }
            }
        }
    }
    for name in analyzers.names() {
        if !proto_cfg.contains_key(name) && analyzers.unload(name) {
            rejected.remove(name);
            tracing::info!(analyzer = name, "analyzer unloaded; its flows go back to the built-in decoders at their next exchange");
            metrics.load(name, "unloaded");
        }
    }
}

/// Keeps `analyzers` in step with `live` until the configuration's sender goes away: at once,
/// then at each change of `clovisor_proto_cfg` or each `PUBLISH` on the plugin channel (which
/// re-reads paths, so a module replaced on disk is picked up).
pub async fn follow(
    analyzers: Analyzers,
    mut live: watch::Receiver<LiveConfig>,
    config_metrics: Option<ConfigMetrics>,
) {
    let mut rejected = HashMap::new();
    let mut seen: Option<(BTreeMap<String, String>, u64)> = None;
    loop {
        let now = {
            let c = live.borrow_and_update();
            (c.proto_cfg.clone(), c.proto_reloads)
        };
        if seen.as_ref() != Some(&now) {
            apply(&analyzers, &now.0, config_metrics.as_ref(), &mut rejected).await;
            seen = Some(now);
        }
        if live.changed().await.is_err() {
            return;
        }
    }
}
