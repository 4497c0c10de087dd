//! A latency summary that merges exactly across time buckets and keys: count, sum, min, max and
//! a fixed-bucket logarithmic histogram for quantiles.
//!
//! Histogram buckets: everything below 1024 ns in bucket 0, then every power of two from
//! 2^10 ns split into 8 equal sub-buckets (bucket width at most 1/8 of its lower bound), up to
//! 2^41 ns (~36 min; longer latencies share the last bucket). A quantile is reported as the
//! middle of the bucket holding the sample of that rank, clamped to [min, max]: it is within
//! 6.25 % of that sample (0.5 µs below 1 µs). Buckets are stored sparsely (only those hit),
//! sorted by index, so a summary of one key in one time bucket costs 8 bytes per distinct
//! latency bucket it saw (at most 249).

/// Bucket 0 holds latencies below 2^10 ns.
const FIRST_OCTAVE_LOG2: u32 = 10;
/// Octaves above the first with their own buckets (the last one also holds anything longer).
const OCTAVES: u32 = 31;
/// Sub-buckets per octave, as a power of two.
const SUB_LOG2: u32 = 3;

/// The histogram bucket of a latency in nanoseconds.
fn index(ns: u64) -> u8 {
    if ns < (1 << FIRST_OCTAVE_LOG2) {
        return 0;
    }
    let log2 = 63 - ns.leading_zeros();
    let octave = log2 - FIRST_OCTAVE_LOG2;
    if octave >= OCTAVES {
        return (OCTAVES << SUB_LOG2) as u8;
    }
    let sub = (ns >> (log2 - SUB_LOG2)) & ((1 << SUB_LOG2) - 1);
    // At most 1 + 30 * 8 + 7 = 248.
    (1 + (octave << SUB_LOG2) + sub as u32) as u8
}

/// The middle of histogram bucket `i`, in nanoseconds.
fn midpoint(i: u8) -> u64 {
    if i == 0 {
        return 1 << (FIRST_OCTAVE_LOG2 - 1);
    }
    let i = u64::from(i) - 1;
    let octave = i >> SUB_LOG2;
    let sub = i & ((1 << SUB_LOG2) - 1);
    let base = 1u64 << (FIRST_OCTAVE_LOG2 as u64 + octave);
    let width = base >> SUB_LOG2;
    base + sub * width + width / 2
}

/// Latencies seen, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    count: u64,
    sum_ns: u64,
    min_ns: u64,
    max_ns: u64,
    /// (bucket, samples), sorted by bucket.
    hist: Vec<(u8, u32)>,
}

impl Latency {
    /// Adds one latency.
    pub fn record(&mut self, ns: u64) {
        if self.count == 0 || ns < self.min_ns {
            self.min_ns = ns;
        }
        self.max_ns = self.max_ns.max(ns);
        self.count = self.count.saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        let i = index(ns);
        match self.hist.binary_search_by_key(&i, |(b, _)| *b) {
            Ok(pos) => self.hist[pos].1 = self.hist[pos].1.saturating_add(1),
            Err(pos) => self.hist.insert(pos, (i, 1)),
        }
    }

    /// Adds everything `other` saw.
    pub fn merge(&mut self, other: &Self) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min_ns < self.min_ns {
            self.min_ns = other.min_ns;
        }
        self.max_ns = self.max_ns.max(other.max_ns);
        self.count = self.count.saturating_add(other.count);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        let mut merged = Vec::with_capacity(self.hist.len().max(other.hist.len()));
        let (mut a, mut b) = (self.hist.iter().peekable(), other.hist.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, na)), Some(&&(ib, nb))) => {
                    if ia == ib {
                        merged.push((ia, na.saturating_add(nb)));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, na));
                        a.next();
                    } else {
                        merged.push((ib, nb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.hist = merged;
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest, `None` when nothing was recorded.
    pub fn min_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min_ns)
    }

    /// The largest, `None` when nothing was recorded.
    pub fn max_ns(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_ns)
    }

    /// The mean, `None` when nothing was recorded.
    pub fn avg_ns(&self) -> Option<u64> {
        self.sum_ns.checked_div(self.count)
    }

    /// The `q`-quantile (0 < q ≤ 1) within the histogram's accuracy, `None` when nothing was
    /// recorded.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        // The rank of the sample wanted, 1-based: ceil(q * count), at least 1.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for &(i, n) in &self.hist {
            seen = seen.saturating_add(u64::from(n));
            if seen >= rank {
                return Some(midpoint(i).clamp(self.min_ns, self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for ns in (1024u64..(1 << 41)).step_by(7_919_993) {
            let i = index(ns);
            assert!(i >= last, "bucket of {ns} ns went backwards");
            last = i;
            let mid = midpoint(i) as f64;
            let err = (mid - ns as f64).abs() / ns as f64;
            assert!(err <= 0.0625, "{ns} ns reported as {mid}: error {err}");
        }
        assert_eq!(
            index(u64::MAX),
            248,
            "longer latencies share the last bucket"
        );
    }

    #[test]
    fn quantiles_and_merge_agree_with_the_samples() {
        // 1..=1000 ms in two halves merged: p50 ≈ 500 ms, p90 ≈ 900 ms, p99 ≈ 990 ms.
        let (mut a, mut b) = (Latency::default(), Latency::default());
        for ms in 1..=1000u64 {
            let target = if ms % 2 == 0 { &mut a } else { &mut b };
            target.record(ms * 1_000_000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 1000);
        assert_eq!(a.min_ns(), Some(1_000_000));
        assert_eq!(a.max_ns(), Some(1_000_000_000));
        assert_eq!(a.avg_ns(), Some(500_500_000));
        for (q, want) in [(0.5, 500e6), (0.9, 900e6), (0.99, 990e6)] {
            let got = a.quantile_ns(q).expect("samples were recorded") as f64;
            assert!(
                (got - want).abs() / want <= 0.0625,
                "p{q}: expected about {want} ns, got {got}"
            );
        }
        assert_eq!(Latency::default().quantile_ns(0.5), None);
    }
}
