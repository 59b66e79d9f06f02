//! The process-wide workers of the transcribers: one rayon pool per thread count, shared by every
//! transcriber (and element) asking for that many threads, and with it one decode scheduler.
//!
//! Live elements captioning several channels on one machine share the pool; each live decode
//! (encoder + decoder over the stream's buffer) takes a turn on the scheduler first. Turns go
//! by deadline, not by arrival: the stream whose oldest unfinalised word is closest to its
//! latency budget (or which waits for the decode that finalises an utterance) decodes first, so
//! one busy stream cannot starve the others, and a decode never shares the cores with another
//! (a decode uses every thread of the pool). Offline transcription does not take turns.

use std::collections::{BTreeSet, HashMap};
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use once_cell::sync::Lazy;

use crate::error::Error;

/// A worker pool and the scheduler of the live decodes that run on it.
pub struct Workers {
    pool: rayon::ThreadPool,
    scheduler: Arc<DecodeScheduler>,
}

impl Deref for Workers {
    type Target = rayon::ThreadPool;
    fn deref(&self) -> &rayon::ThreadPool {
        &self.pool
    }
}

impl Workers {
    pub fn scheduler(&self) -> &Arc<DecodeScheduler> {
        &self.scheduler
    }
}

/// The process-wide workers of `threads` threads (made on first use, kept while any
/// transcriber holds them).
pub fn shared_workers(threads: usize) -> Result<Arc<Workers>, Error> {
    static POOLS: Lazy<Mutex<HashMap<usize, Weak<Workers>>>> =
        Lazy::new(|| Mutex::new(HashMap::new()));
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = pools.get(&threads).and_then(Weak::upgrade) {
        return Ok(w);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("whispernpu-{i}"))
        .build()
        .map_err(|e| Error::InvalidOption {
            option: "n-threads",
            why: e.to_string(),
        })?;
    let workers = Arc::new(Workers {
        pool,
        scheduler: Arc::default(),
    });
    pools.retain(|_, w| w.strong_count() > 0);
    pools.insert(threads, Arc::downgrade(&workers));
    Ok(workers)
}

/// Turns for live decodes, earliest deadline first (ties: first come, first served).
#[derive(Default)]
pub struct DecodeScheduler {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    busy: bool,
    waiting: BTreeSet<(Instant, u64)>,
    next_ticket: u64,
    /// Turns given, and how many of them went to a later arrival (an earlier deadline).
    turns: u64,
    overtaken: u64,
}

/// A decode's turn: the next waiting decode starts when it is dropped (also on a panic).
pub struct Turn {
    scheduler: Arc<DecodeScheduler>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.scheduler.lock().busy = false;
        self.scheduler.changed.notify_all();
    }
}

impl DecodeScheduler {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no decode runs and no waiting decode has an earlier `deadline`.
    pub fn turn(self: &Arc<Self>, deadline: Instant) -> Turn {
        let mut st = self.lock();
        let ticket = (deadline, st.next_ticket);
        st.next_ticket += 1;
        st.waiting.insert(ticket);
        while st.busy || st.waiting.first() != Some(&ticket) {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.waiting.remove(&ticket);
        st.busy = true;
        st.turns += 1;
        if st.waiting.iter().any(|w| w.1 < ticket.1) {
            st.overtaken += 1;
        }
        Turn {
            scheduler: Arc::clone(self),
        }
    }

    /// A turn now, when no decode runs or waits (else `None`: the caller may decode later).
    pub fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let mut st = self.lock();
        if st.busy || !st.waiting.is_empty() {
            return None;
        }
        st.busy = true;
        st.turns += 1;
        Some(Turn {
            scheduler: Arc::clone(self),
        })
    }

    /// Decodes waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Turns given so far, and how many of them went ahead of a decode that had waited longer.
    pub fn turns(&self) -> (u64, u64) {
        let st = self.lock();
        (st.turns, st.overtaken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn turns_go_by_deadline_not_arrival() {
        let s = Arc::new(DecodeScheduler::default());
        let now = Instant::now();
        let first = s.turn(now);
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        // Arrive in order 0, 1, 2 with deadlines late, early, middle.
        for (i, ms) in [(0u32, 3000u64), (1, 1000), (2, 2000)] {
            let (s2, tx) = (Arc::clone(&s), tx.clone());
            handles.push(std::thread::spawn(move || {
                let _turn = s2.turn(now + Duration::from_millis(ms));
                tx.send(i).unwrap();
            }));
            // Bounded waits: a thread that died (a panic) fails the test instead of hanging it.
            let queued = Instant::now();
            while s.waiting() < i as usize + 1 {
                assert!(
                    queued.elapsed() < Duration::from_secs(10),
                    "thread {i} never queued"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(first);
        let order: Vec<u32> = (0..3)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a turn"))
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(order, [1, 2, 0]);
        assert_eq!(s.turns(), (4, 2));
    }

    #[test]
    fn try_turn_only_when_idle() {
        let s = Arc::new(DecodeScheduler::default());
        let t = s.try_turn().expect("idle");
        assert!(s.try_turn().is_none());
        drop(t);
        assert!(s.try_turn().is_some());
    }

    #[test]
    fn a_panicking_decode_gives_its_turn_back() {
        let s = Arc::new(DecodeScheduler::default());
        let s2 = Arc::clone(&s);
        let r = std::thread::spawn(move || {
            let _turn = s2.turn(Instant::now());
            panic!("decode failed");
        })
        .join();
        assert!(r.is_err());
        let _turn = s.turn(Instant::now());
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn transcribers_of_one_thread_count_share_workers() {
        let a = shared_workers(2).unwrap();
        let b = shared_workers(2).unwrap();
        let c = shared_workers(1).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.current_num_threads(), 2);
    }
}
