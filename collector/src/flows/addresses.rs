//! The addresses sessions name their ends by, held once for the life of the process so that
//! putting one into a session is a copy of a pointer.
//!
//! Every session holds its client's and server's address as `Bytes` (the generated protobuf
//! type's), four of them an exchange where a counters-only view comes along. Shared by reference
//! count, each was an atomic increment when made and a decrement when dropped, and in the
//! collector's profile these alone were about 4 % of its samples, with one worker thread as
//! with two (docs/benchmarks.md, fourteenth round). An address kept here is static bytes: a
//! `Bytes` of it counts nothing.
//!
//! The pool is bounded: at most [`MAX_ADDRESSES`] addresses (IPv4 or IPv6, a few dozen kilobytes
//! in all), taken the first time each is seen and never let go; beyond, or for bytes that are
//! not an address, a flow's addresses are its own, counted as before. A cluster's pods and nodes
//! are usually far fewer; a node interface facing many outside clients fills it and then costs
//! what it did before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use rustc_hash::FxBuildHasher;

/// Addresses the process keeps at most.
pub const MAX_ADDRESSES: usize = 4096;

/// Addresses kept, by length and bytes.
#[derive(Debug)]
struct Pool {
    kept: HashMap<(u8, [u8; 16]), &'static [u8], FxBuildHasher>,
    most: usize,
}

impl Pool {
    const fn new(most: usize) -> Self {
        Self {
            kept: HashMap::with_hasher(FxBuildHasher),
            most,
        }
    }

    /// `ip` as static bytes, kept the first time; `None` when it is not an address or the pool
    /// is full.
    fn get(&mut self, ip: &[u8]) -> Option<&'static [u8]> {
        let len = u8::try_from(ip.len())
            .ok()
            .filter(|l| *l == 4 || *l == 16)?;
        let mut bytes = [0u8; 16];
        bytes.get_mut(..ip.len())?.copy_from_slice(ip);
        let key = (len, bytes);
        if let Some(kept) = self.kept.get(&key) {
            return Some(kept);
        }
        if self.kept.len() >= self.most {
            return None;
        }
        let kept: &'static [u8] = Box::leak(ip.to_vec().into_boxed_slice());
        self.kept.insert(key, kept);
        Some(kept)
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool::new(MAX_ADDRESSES));

/// `ip` as a session holds it: static bytes from the pool, or a copy of its own.
pub fn shared(ip: &[u8]) -> Bytes {
    let kept = POOL.lock().unwrap_or_else(PoisonError::into_inner).get(ip);
    match kept {
        Some(kept) => Bytes::from_static(kept),
        None => Bytes::copy_from_slice(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_kept_once_and_the_pool_stays_within_its_bound() {
        let mut pool = Pool::new(3);
        let a = pool.get(&[10, 0, 0, 1]).expect("an IPv4 address");
        assert_eq!(a, [10, 0, 0, 1]);
        assert_eq!(
            pool.get(&[10, 0, 0, 1]).map(<[u8]>::as_ptr),
            Some(a.as_ptr()),
            "kept once"
        );
        let v6 = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(pool.get(&v6), Some(&v6[..]));
        // Four bytes and sixteen that begin alike are two addresses.
        let mut padded = [0u8; 16];
        padded[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(pool.get(&padded), Some(&padded[..]));
        assert_eq!(pool.kept.len(), 3);
        assert_eq!(pool.get(&[10, 0, 0, 2]), None, "full");
        assert_eq!(
            pool.get(&[10, 0, 0, 1]),
            Some(a),
            "what it holds it still gives"
        );
        for odd in [&[][..], &[1, 2, 3], &[0; 5], &[0; 17]] {
            assert_eq!(Pool::new(8).get(odd), None, "{odd:?} is not an address");
        }
    }

    #[test]
    fn a_session_gets_the_same_bytes_either_way() {
        for ip in [&[192, 168, 1, 7][..], &[1, 2, 3], &[0xfe; 16]] {
            assert_eq!(shared(ip), Bytes::copy_from_slice(ip));
        }
    }
}
