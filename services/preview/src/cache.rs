//! A small map whose entries expire, bounded in size: what the previewer remembers per URL
//! and per host. A `std` mutex, never held across an await; the oldest entries go first
//! when it is full, so a flood of distinct URLs costs memory up to the bound and no more.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

pub struct TtlCache<V> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    map: HashMap<String, (Instant, V)>,
    /// Keys in insertion order, with the insertion time that identifies the entry (a key
    /// inserted again leaves a stale position behind, skipped at eviction).
    order: VecDeque<(String, Instant)>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// The value for `key`, unless it is missing or expired.
    pub fn get(&self, key: &str) -> Option<V> {
        let inner = self.lock();
        let (at, value) = inner.map.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn insert(&self, key: String, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.order.push_back((key.clone(), now));
        inner.map.insert(key, (now, value));
        while inner.map.len() > self.capacity || inner.order.len() > 2 * self.capacity {
            let Some((key, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&key).is_some_and(|(t, _)| *t == at) {
                inner.map.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock leaves a consistent map: use it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        cache.insert("a".into(), 1);
        assert_eq!(cache.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get("a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_go_when_full() {
        let cache = TtlCache::new(Duration::from_secs(60), 3);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            cache.insert(k.into(), i);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("d"), Some(3));
        // Re-inserting a key many times keeps the bookkeeping bounded too.
        for i in 0..100 {
            cache.insert("d".into(), i);
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(cache.get("d"), Some(99));
        assert!(cache.lock().order.len() <= 6);
    }
}
