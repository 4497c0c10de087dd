//! The process's own CPU and memory, read from `/proc/self` at each scrape:
//! `process_cpu_seconds_total` (user + system time) and `process_resident_memory_bytes`, under
//! the names every Prometheus client library uses, so dashboards chart each component alike;
//! and the calling thread's CPU time, which the benchmarks time their work by.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`: exact, not sampled at
/// ticks).
pub fn thread_cpu_time() -> std::io::Result<std::time::Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_err(std::io::Error::from)?;
    Ok(std::time::Duration::from(t))
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `USER_HZ`, 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` when scraped.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Registers the collector in `registry`.
    pub fn register(registry: &mut Registry) {
        registry.register_collector(Box::new(Self));
    }
}

/// User plus system CPU seconds from the text of `/proc/self/stat`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / USER_HZ)
}

/// Resident bytes from the text of `/proc/self/status` (`VmRSS: <n> kB`).
fn resident_bytes(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Unreadable (not Linux, /proc not mounted): the series are absent, not wrong.
        if let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_seconds(&s))
        {
            let counter = ConstCounter::new(cpu);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent by the process, in seconds",
                None,
                counter.metric_type(),
            )?;
            counter.encode(m)?;
        }
        if let Some(rss) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_bytes(&s))
        {
            let gauge = ConstGauge::new(rss);
            let m = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory of the process, in bytes",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let stat = "4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(stat), Some(4.0), "(250 + 150) ticks at 100 Hz");
        assert_eq!(cpu_seconds("garbage"), None);
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(resident_bytes(status), Some(2048 * 1024));
        assert_eq!(resident_bytes("VmRSS: lots kB"), None);
    }

    #[test]
    fn this_process_is_measured() {
        let mut registry = Registry::default();
        ProcessCollector::register(&mut registry);
        let text = crate::encode_metrics(&registry);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
        };
        assert!(value("process_cpu_seconds_total ") >= 0.0);
        assert!(
            value("process_resident_memory_bytes ") > 1e6,
            "a test process holds more than 1 MB"
        );
    }
}
