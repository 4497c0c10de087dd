//! Writing BPF maps: one error shape for every map operation, and replacing a hash map's
//! contents without a moment where a kept entry is missing.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::HashMap as BpfHashMap;
use aya::Ebpf;

use crate::error::{Error, Result};

/// Turns an aya map error into [`Error::Map`] naming the map and what was done to it.
pub(crate) fn map_err(
    map: &'static str,
    what: &'static str,
) -> impl Fn(aya::maps::MapError) -> Error {
    move |source| Error::Map { map, what, source }
}

/// Makes the hash map `name` hold exactly `wanted`: inserts first, so an entry kept across the
/// update is never missing, then removes the rest.
pub(crate) fn replace_map<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &BTreeMap<K, V>,
) -> Result<()>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    let mut map: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(ebpf.map_mut(name).ok_or(Error::MissingMap { map: name })?)
            .map_err(map_err(name, "open"))?;
    let present: BTreeSet<K> = map.keys().filter_map(|k| k.ok()).collect();
    for (k, v) in wanted {
        map.insert(k, v, 0).map_err(map_err(name, "insert"))?;
    }
    for k in present.iter().filter(|k| !wanted.contains_key(k)) {
        map.remove(k).map_err(map_err(name, "remove"))?;
    }
    Ok(())
}
