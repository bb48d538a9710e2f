//! A small bounded least-recently-used map, used for the ETag cache, the positive artifact cache and the
//! known runs of build ids.
//!
//! octocrab's own HTTP cache layer is unbounded and keyed by URI only, so a long-running service would
//! grow it forever; here every cache has a fixed capacity and evicts the entry used longest ago. Entries
//! evicted from the positive cache merely cost one more (usually free, 304) lookup.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

/// A thread-safe map holding at most `capacity` entries, evicting the least recently used one.
#[derive(Debug)]
pub(crate) struct BoundedLru<K, V> {
    inner: Mutex<LruState<K, V>>,
}

#[derive(Debug)]
struct LruState<K, V> {
    capacity: usize,
    /// Monotonic use counter; the entry with the smallest stamp is the least recently used.
    clock: u64,
    entries: HashMap<K, (V, u64)>,
    by_stamp: BTreeMap<u64, K>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedLru<K, V> {
    /// A cache holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(LruState {
                capacity: capacity.max(1),
                clock: 0,
                entries: HashMap::new(),
                by_stamp: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruState<K, V>> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that matters for a
        // cache (worst case: a stale entry), so a poisoned lock is simply reused.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value for `key`, marking it as recently used.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut state = self.lock();
        state.clock += 1;
        let stamp = state.clock;
        let (value, old_stamp) = {
            let (value, entry_stamp) = state.entries.get_mut(key)?;
            let old = *entry_stamp;
            *entry_stamp = stamp;
            (value.clone(), old)
        };
        state.by_stamp.remove(&old_stamp);
        state.by_stamp.insert(stamp, key.clone());
        Some(value)
    }

    /// Inserts or replaces the value for `key`, evicting the least recently used entry when full.
    pub(crate) fn insert(&self, key: K, value: V) {
        let mut state = self.lock();
        state.clock += 1;
        let stamp = state.clock;
        if let Some((_, old_stamp)) = state.entries.insert(key.clone(), (value, stamp)) {
            state.by_stamp.remove(&old_stamp);
        }
        state.by_stamp.insert(stamp, key);
        while state.entries.len() > state.capacity {
            let Some((_, oldest)) = state.by_stamp.pop_first() else {
                break;
            };
            state.entries.remove(&oldest);
        }
    }

    /// Removes the entry for `key`.
    pub(crate) fn remove(&self, key: &K) -> Option<V> {
        let mut state = self.lock();
        let (value, stamp) = state.entries.remove(key)?;
        state.by_stamp.remove(&stamp);
        Some(value)
    }

    /// Number of entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_entry_when_full() {
        let cache = BoundedLru::new(2);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!(cache.get(&"a"), Some(1));
        cache.insert("c", 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"b"), None, "b was used longest ago");
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"c"), Some(3));
    }

    #[test]
    fn replacing_a_value_keeps_one_entry() {
        let cache = BoundedLru::new(3);
        cache.insert("a", 1);
        cache.insert("a", 2);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&"a"), Some(2));
        assert_eq!(cache.remove(&"a"), Some(2));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn zero_capacity_still_holds_the_latest_entry() {
        let cache = BoundedLru::new(0);
        cache.insert("a", 1);
        cache.insert("b", 2);
        assert_eq!(cache.get(&"a"), None);
        assert_eq!(cache.get(&"b"), Some(2));
    }
}
