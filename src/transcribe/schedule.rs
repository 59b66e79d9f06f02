//! The process-wide workers of the transcribers: one rayon pool per thread count, shared by every
//! transcriber (and element) asking for that many threads, and with it one decode scheduler.
//!
//! Live elements captioning several channels on one machine share the pool; each live decode
//! (encoder + decoder over the stream's buffer) takes a turn on the scheduler first. Turns go
//! by deadline, not by arrival: the stream whose oldest unfinalised word is closest to its
//! latency budget (or which waits for the decode that finalises an utterance) decodes first, so
//! one busy stream cannot starve the others. A decode that starts while no other runs or waits
//! gets every thread of the pool; while decodes queue, each gets one thread and as many run at
//! once as the pool has threads (a decode on one thread does more work per core than one
//! spread over two: tiny.en 2.2 s on two threads, 3.5 s on one, for the 295 s benchmark).
//! Offline transcription does not take turns.

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
        scheduler: Arc::new(DecodeScheduler::new(threads)),
    });
    pools.retain(|_, w| w.strong_count() > 0);
    pools.insert(threads, Arc::downgrade(&workers));
    Ok(workers)
}

/// Turns for live decodes, earliest deadline first (ties: first come, first served), on a pool
/// of `threads` threads.
pub struct DecodeScheduler {
    threads: usize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Threads the running decodes were given.
    busy: usize,
    waiting: BTreeSet<(Instant, u64)>,
    next_ticket: u64,
    /// Turns given, and how many of them went to a later arrival (an earlier deadline).
    turns: u64,
    overtaken: u64,
    /// Waits that ended without a turn ([`DecodeScheduler::turn_until`]).
    given_up: u64,
    /// How long turns are held, as the slow ones go (the last one or the longest recent one,
    /// decaying by a tenth a turn), seconds.
    held: f64,
}

/// A decode's turn and the threads it may use: the next waiting decode starts when it is
/// dropped (also on a panic).
pub struct Turn {
    scheduler: Arc<DecodeScheduler>,
    threads: usize,
    since: Instant,
}

impl Turn {
    /// Threads of the pool this decode may use (all, or one while others queue).
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.scheduler.lock();
        st.busy = st.busy.saturating_sub(self.threads);
        st.held = self.since.elapsed().as_secs_f64().max(0.9 * st.held);
        drop(st);
        self.scheduler.changed.notify_all();
    }
}

impl DecodeScheduler {
    /// A scheduler for a pool of `threads` threads.
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The threads a decode starting now (with a thread free) gets: every thread when none is
    /// in use and no other decode waits, else one.
    fn grant(&self, st: &State) -> usize {
        if st.busy == 0 && st.waiting.is_empty() {
            self.threads
        } else {
            1
        }
    }

    /// Waits until a thread is free and no waiting decode has an earlier `deadline`.
    pub fn turn(self: &Arc<Self>, deadline: Instant) -> Turn {
        self.turn_until(deadline, None)
            .expect("a turn without a time limit is always given")
    }

    /// [`Self::turn`], giving up at `give_up` (`None` when the turn did not come by then: the
    /// caller's result would be too late to be of use).
    pub fn turn_until(
        self: &Arc<Self>,
        deadline: Instant,
        give_up: Option<Instant>,
    ) -> Option<Turn> {
        let mut st = self.lock();
        let ticket = (deadline, st.next_ticket);
        st.next_ticket += 1;
        st.waiting.insert(ticket);
        loop {
            if st.busy < self.threads && st.waiting.first() == Some(&ticket) {
                // Past its limit, a turn is taken only on idle workers (no decode running or
                // waiting): its result is late, but it delays nobody.
                let late = give_up.is_some_and(|limit| limit <= Instant::now());
                if !late || (st.busy == 0 && st.waiting.len() == 1) {
                    break;
                }
            }
            st = match give_up {
                None => self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(limit) => {
                    let Some(left) = limit.checked_duration_since(Instant::now()) else {
                        st.waiting.remove(&ticket);
                        st.given_up += 1;
                        drop(st);
                        // The next in line may be waiting on this one.
                        self.changed.notify_all();
                        return None;
                    };
                    self.changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        st.waiting.remove(&ticket);
        let threads = self.grant(&st);
        st.busy += threads;
        st.turns += 1;
        if st.waiting.iter().any(|w| w.1 < ticket.1) {
            st.overtaken += 1;
        }
        drop(st);
        // The next in line may start on a thread left free.
        self.changed.notify_all();
        Some(Turn {
            scheduler: Arc::clone(self),
            threads,
            since: Instant::now(),
        })
    }

    /// A turn now, when a thread is free and no decode waits (else `None`: the caller may
    /// decode later).
    pub fn try_turn(self: &Arc<Self>) -> Option<Turn> {
        let mut st = self.lock();
        if st.busy >= self.threads || !st.waiting.is_empty() {
            return None;
        }
        let threads = self.grant(&st);
        st.busy += threads;
        st.turns += 1;
        Some(Turn {
            scheduler: Arc::clone(self),
            threads,
            since: Instant::now(),
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

    /// Waits that gave up without a turn.
    pub fn given_up(&self) -> u64 {
        self.lock().given_up
    }

    /// How long a turn (a live decode) lasts on these workers, as the slow ones go: what a
    /// decode starting now should expect, whichever stream it is for (seconds).
    pub fn turn_seconds(&self) -> f64 {
        self.lock().held
    }
}

#[cfg(test)]
mod tests {
    //! The threads spawned here are the tests' own: a panic in one fails its `join().unwrap()`,
    //! every wait on them is bounded (`recv_timeout`, a timed queue wait), and a `Turn` frees its
    //! threads on drop, also while unwinding. The scheduler itself spawns nothing.
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn turns_go_by_deadline_not_arrival() {
        let s = Arc::new(DecodeScheduler::new(1));
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
        let s = Arc::new(DecodeScheduler::new(1));
        let t = s.try_turn().expect("idle");
        assert!(s.try_turn().is_none());
        drop(t);
        assert!(s.try_turn().is_some());
    }

    #[test]
    fn queued_decodes_share_the_threads_one_each() {
        let s = Arc::new(DecodeScheduler::new(2));
        // Alone: every thread.
        let first = s.turn(Instant::now());
        assert_eq!(first.threads(), 2);
        assert!(s.try_turn().is_none(), "no thread free");
        // Two queue behind it: once it ends, both run at once on a thread each.
        let (tx, rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let mut handles = Vec::new();
        for i in 0..2u32 {
            let (s2, tx, release) = (Arc::clone(&s), tx.clone(), Arc::clone(&release_rx));
            handles.push(std::thread::spawn(move || {
                let turn = s2.turn(Instant::now());
                tx.send((i, turn.threads())).unwrap();
                // Hold the turn until the test has seen both running.
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(10));
                drop(turn);
            }));
            let queued = Instant::now();
            while s.waiting() < i as usize + 1 {
                assert!(queued.elapsed() < Duration::from_secs(10), "never queued");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(first);
        let mut got: Vec<(u32, usize)> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("a turn"))
            .collect();
        got.sort();
        assert_eq!(got, [(0, 1), (1, 1)], "both at once, one thread each");
        assert!(s.try_turn().is_none(), "both threads in use");
        for _ in 0..2 {
            release_tx.send(()).unwrap();
        }
        for h in handles {
            h.join().unwrap();
        }
        // Idle again: a re-decode's turn gets every thread.
        let t = s.try_turn().expect("idle");
        assert_eq!(t.threads(), 2);
    }

    #[test]
    fn a_wait_with_a_limit_gives_up_and_lets_the_next_in_line_go() {
        let s = Arc::new(DecodeScheduler::new(1));
        let now = Instant::now();
        let busy = s.turn(now);
        // Nothing frees the thread: the wait ends at its limit, without a turn.
        let t0 = Instant::now();
        let limit = t0 + Duration::from_millis(50);
        assert!(s.turn_until(now, Some(limit)).is_none());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!((s.waiting(), s.given_up()), (0, 1));
        // A limit already past gives up at once while the workers are in use; one that is
        // not reached gets the turn.
        assert!(s.turn_until(now, Some(now)).is_none());
        drop(busy);
        let far = Instant::now() + Duration::from_secs(10);
        let t = s
            .turn_until(now, Some(far))
            .expect("a turn before the limit");
        drop(t);
        // On idle workers even a late turn is given: it delays nobody.
        assert!(s.turn_until(now, Some(now)).is_some());
        assert_eq!(s.given_up(), 2);
    }

    #[test]
    fn a_panicking_decode_gives_its_turn_back() {
        let s = Arc::new(DecodeScheduler::new(1));
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
