//! Coverage feedback on stable Rust, from LLVM's SanitizerCoverage.
//!
//! `scripts/fuzz-coverage.sh` builds the fuzzer with the stable codegen flags
//! `-C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3
//! -C llvm-args=-sanitizer-coverage-inline-8bit-counters` (and `--target` the host, so build
//! scripts and proc macros stay uninstrumented). LLVM then gives every edge of every
//! instrumented function a one-byte counter, incremented inline, and each module's constructor
//! announces its counters' range to [`__sanitizer_cov_8bit_counters_init`], defined here. No
//! nightly compiler, no libFuzzer: the fuzzer reads the counters after each input itself.
//!
//! Built without those flags (`cargo run -p clovisor-fuzz`, `cargo test`), nothing calls the
//! hook, [`Coverage::attach`] finds no counters, and the fuzzer runs coverage-free.
//!
//! An input is *interesting* when some edge reaches a hit-count class (1, 2, 3, 4–7, 8–15,
//! 16–31, 32–127, 128+, as AFL counts them) it never reached before: the fuzzer keeps it and
//! mutates it further.

// The one place of the workspace that touches raw memory: the counters LLVM lays out, whose
// address only the instrumentation's module constructors know.
#![allow(unsafe_code)]

use std::sync::Mutex;

/// The counter ranges the instrumented modules announced (start address, length), before
/// `main`.
static REGIONS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Called by each instrumented module's constructor with its counters `[start, stop)`.
///
/// # Safety
/// Called by LLVM's instrumentation only, with the bounds of a live, static counter section.
#[no_mangle]
pub unsafe extern "C" fn __sanitizer_cov_8bit_counters_init(start: *mut u8, stop: *mut u8) {
    let (start, stop) = (start as usize, stop as usize);
    if start == 0 || stop <= start {
        return;
    }
    REGIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((start, stop - start));
}

/// The hit-count class of a counter value, as one bit (0 for a counter not hit).
fn class(count: u8) -> u8 {
    match count {
        0 => 0,
        1 => 1,
        2 => 2,
        3 => 4,
        4..=7 => 8,
        8..=15 => 16,
        16..=31 => 32,
        32..=127 => 64,
        128..=255 => 128,
    }
}

/// The process's edge counters and what the run has seen of them. Not `Send`: the counters are
/// written by the instrumented code of the thread that runs the inputs, and read between
/// inputs on that same thread.
pub struct Coverage {
    /// Counter sections: start, length.
    regions: Vec<(*mut u8, usize)>,
    /// Per counter, the classes seen so far (bits of [`class`]).
    seen: Vec<u8>,
    /// Counters ever hit.
    edges: usize,
}

impl std::fmt::Debug for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coverage")
            .field("counters", &self.seen.len())
            .field("edges", &self.edges)
            .finish()
    }
}

impl Coverage {
    /// The counters of this process, if it was built instrumented.
    pub fn attach() -> Option<Self> {
        let regions = REGIONS.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Self::over(
            regions
                .into_iter()
                .map(|(start, len)| (start as *mut u8, len))
                .collect(),
        )
    }

    /// Coverage over counter sections `regions` (none: `None`).
    fn over(regions: Vec<(*mut u8, usize)>) -> Option<Self> {
        let total: usize = regions.iter().map(|(_, len)| len).sum();
        (total > 0).then(|| Self {
            regions,
            seen: vec![0; total],
            edges: 0,
        })
    }

    /// The counters, to read or zero between inputs.
    fn sections(&mut self) -> impl Iterator<Item = &mut [u8]> + '_ {
        self.regions.iter().map(|&(start, len)| {
            // SAFETY: each region is a counter section LLVM announced (static, never freed,
            // `u8`s), or one the tests leaked. The only other writer is instrumented code,
            // which runs on this thread and never while this borrow (of `&mut self`) lives.
            unsafe { std::slice::from_raw_parts_mut(start, len) }
        })
    }

    /// Counters (edges instrumented).
    pub fn counters(&self) -> usize {
        self.seen.len()
    }

    /// Edges hit by any input so far.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// Zeroes the counters before an input.
    pub fn reset(&mut self) {
        for section in self.sections() {
            section.fill(0);
        }
    }

    /// Takes in the counters of the input just run: whether it reached an edge, or a hit-count
    /// class of one, not reached before.
    pub fn collect(&mut self) -> bool {
        let mut new = false;
        let mut edges = 0;
        let mut seen = std::mem::take(&mut self.seen);
        let mut offset = 0;
        for section in self.sections() {
            let mine = &mut seen[offset..offset + section.len()];
            offset += section.len();
            // Most counters are zero: skip them eight at a time.
            for (words, seen) in section.chunks(8).zip(mine.chunks_mut(8)) {
                if words.iter().all(|&c| c == 0) {
                    continue;
                }
                for (&count, seen) in words.iter().zip(seen) {
                    let bit = class(count);
                    if bit & !*seen != 0 {
                        if *seen == 0 {
                            edges += 1;
                        }
                        *seen |= bit;
                        new = true;
                    }
                }
            }
        }
        self.seen = seen;
        self.edges += edges;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(len: usize) -> (*mut u8, usize) {
        (
            Box::leak(vec![0u8; len].into_boxed_slice()).as_mut_ptr(),
            len,
        )
    }

    /// Writes counter `i` of section `s`, as instrumented code would.
    fn hit(cov: &mut Coverage, s: usize, i: usize, count: u8) {
        if let Some(section) = cov.sections().nth(s) {
            section[i] = count;
        }
    }

    #[test]
    fn an_input_is_new_for_an_edge_or_a_hit_count_class_not_seen_before() {
        let mut cov = Coverage::over(vec![fake(12), fake(2)]).expect("counters");
        assert_eq!(cov.counters(), 14);
        hit(&mut cov, 0, 9, 1);
        assert!(cov.collect(), "a first edge");
        assert_eq!(cov.edges(), 1);
        cov.reset();
        hit(&mut cov, 0, 9, 1);
        assert!(!cov.collect(), "the same edge, the same class");
        hit(&mut cov, 0, 9, 5);
        assert!(cov.collect(), "the same edge, hit 4-7 times: a new class");
        hit(&mut cov, 0, 9, 6);
        assert!(!cov.collect(), "6 is in the class of 5");
        hit(&mut cov, 1, 1, 200);
        assert!(cov.collect(), "an edge of the second section");
        assert_eq!(cov.edges(), 2);
        cov.reset();
        assert!(cov.sections().all(|s| s.iter().all(|&c| c == 0)));
        assert!(!cov.collect(), "nothing hit is nothing new");
    }

    #[test]
    fn an_uninstrumented_build_has_no_counters() {
        assert!(Coverage::over(Vec::new()).is_none());
        assert_eq!(class(0), 0);
        assert_eq!(class(255), 128);
    }
}
