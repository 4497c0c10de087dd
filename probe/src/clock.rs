//! Converts the kernel's `bpf_ktime_get_boot_ns()` timestamps into Unix time.

use nix::time::{clock_gettime, ClockId};

/// Maps boot-time nanoseconds (CLOCK_BOOTTIME, what the BPF programs stamp) to Unix
/// nanoseconds (CLOCK_REALTIME). The offset is sampled once; call [`BootClock::resync`]
/// now and then so wall-clock steps (NTP) are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClock {
    /// realtime - boottime, in ns.
    offset_ns: i128,
}

fn ns(clock: ClockId) -> i128 {
    // clock_gettime on these two clocks cannot fail on Linux ≥ 2.6.39; a failure would
    // mean a seccomp filter, where a zero offset is the least surprising answer.
    match clock_gettime(clock) {
        Ok(ts) => i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()),
        Err(_) => 0,
    }
}

impl BootClock {
    /// Samples the offset between the two clocks now.
    pub fn now() -> Self {
        let boot_before = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        let boot_after = ns(ClockId::CLOCK_BOOTTIME);
        // Pair the realtime sample with the midpoint of the two boot samples.
        Self::with_offset(real - (boot_before + boot_after) / 2)
    }

    /// A clock with a fixed offset (tests, replays).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Samples the offset again.
    pub fn resync(&mut self) {
        *self = Self::now();
    }

    /// Current boot-time ns, the clock the BPF programs read.
    pub fn boot_now_ns() -> u64 {
        u64::try_from(ns(ClockId::CLOCK_BOOTTIME)).unwrap_or(0)
    }

    /// Unix ns of a boot-time timestamp, saturating at the ends of `u64`.
    pub fn to_unix_ns(&self, boot_ns: u64) -> u64 {
        let unix = i128::from(boot_ns) + self.offset_ns;
        u64::try_from(unix.max(0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_offset_is_added() {
        let c = BootClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(
            c.to_unix_ns(5),
            1_700_000_000_000_000_005,
            "boot 5 ns with offset 1.7e18 must map to 1.7e18 + 5"
        );
    }

    #[test]
    fn negative_results_saturate_at_zero() {
        let c = BootClock::with_offset(-100);
        assert_eq!(c.to_unix_ns(10), 0, "10 - 100 must saturate at 0");
    }

    #[test]
    fn live_clock_maps_now_to_about_now() {
        let c = BootClock::now();
        let unix = c.to_unix_ns(BootClock::boot_now_ns());
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let diff = (i128::try_from(sys).unwrap_or(0) - i128::from(unix)).abs();
        assert!(
            diff < 50_000_000,
            "mapped boot time {unix} must be within 50 ms of SystemTime {sys}, off by {diff} ns"
        );
    }
}
