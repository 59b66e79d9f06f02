//! An encoder on its own thread, so that an accelerator (the NPU; ONNX Runtime on a GPU or NPU
//! execution provider) can encode the next window while the CPU decodes this one. Any
//! [`Encoder`] works; the counters keep the NPU's names.
//!
//! The next window's start depends on this window's decode: openai's loop seeks to the last
//! consecutive timestamp pair, or by the whole window when the window ends on a single
//! timestamp, has no pair or is skipped as silence. So the next window is encoded
//! *speculatively* ([`EncoderWorker::speculate`]) at candidate starts the transcriber names
//! while it decodes: the window end ([`Guess::WindowEnd`]) and each new timestamp pair
//! ([`Guess::Pair`]). When the transcriber then asks for a window ([`EncoderWorker::encode`]), a
//! speculative result is used only if it was computed from the same start and bit-identical
//! mel (the streaming normalisation and the tail padding are inside the mel, so comparing it
//! is exact whatever produced it); the others are discarded (a miss: one extra dispatch).
//!
//! Debouncing: the device runs one job at a time and a speculation waits in a single queue slot
//! while it is busy; a newer candidate replaces a queued one that has not started (no dispatch
//! is spent on it). With a fast device (~25–55 ms per window, estimated) every new pair starts
//! almost at once. When a run takes longer than the CPU's decode of a window (`npu-sim`:
//! seconds of CPU per window) pairs are only recorded, not started: the first pair's encode
//! would hold the device past the end of the decode and the final pair (usually emitted just
//! before the end of text) would wait behind it; the window-end guess still starts. Of the finished speculations
//! the worker keeps the window-end guess and the newest pair (a later pair supersedes an
//! earlier one: the final seek is the last pair).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::Encoder;
use crate::error::Error;

fn worker_gone() -> Error {
    Error::Engine {
        engine: "encoder worker".into(),
        why: "the encoder's worker thread stopped".into(),
    }
}

/// Counters of the NPU encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NpuStats {
    /// Windows whose encoder output came from the NPU encoder.
    pub windows: u64,
    /// Runs on the device (as counted by the host encoder): `windows + speculative_misses`
    /// when nothing failed.
    pub dispatches: u64,
    /// Speculative encodes whose result was used (the window was encoded during the previous
    /// window's decode).
    pub speculative_hits: u64,
    /// Speculative encodes run and discarded (another start or different mel, superseded by a
    /// later candidate, or abandoned by a reset).
    pub speculative_misses: u64,
    /// Speculative candidates replaced or dropped before they started (no dispatch spent).
    pub speculative_dropped: u64,
    /// Windows whose start was one of the candidates named during the previous window's
    /// decode (the window-end guess or the newest timestamp pair), whether or not their encode
    /// had started: how well the next seek is predicted, whatever the device's speed.
    pub speculative_predicted: u64,
    /// Runs that failed or timed out (the transcriber then uses the CPU encoder).
    pub failures: u64,
}

/// Which candidate start a speculation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess {
    /// The end of the window being decoded (single timestamp ending, no pair, silence).
    WindowEnd,
    /// A consecutive timestamp pair the decoder emitted.
    Pair,
}

/// Buffers of one job: the window's mel and the encoder output.
struct Buffers {
    mel: Vec<f32>,
    out: Vec<f32>,
}

struct Job {
    id: u64,
    buffers: Buffers,
}

struct Done {
    id: u64,
    buffers: Buffers,
    result: Result<(), Error>,
    dispatches: u64,
    /// How long the run took.
    seconds: f64,
}

/// The queue slot shared with the worker thread: the next job, not started yet.
#[derive(Default)]
struct Slot {
    next: Option<Job>,
    closed: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A poisoned lock only means the worker panicked; the slot itself stays consistent.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job handed to the worker thread and not collected yet.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    seek: usize,
    /// `None`: the window the transcriber asked for.
    guess: Option<Guess>,
}

/// A finished speculative encode.
struct Finished {
    id: u64,
    seek: usize,
    guess: Guess,
    buffers: Buffers,
}

/// A window encoder on a worker thread, with speculative windows (one running, one queued).
pub struct EncoderWorker {
    shared: Arc<Shared>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// Jobs handed over and not collected (at most one running and one queued).
    pending: Vec<Pending>,
    finished: Vec<Finished>,
    /// A speculative run failed: reported by the next [`encode`](Self::encode).
    failed: Option<Error>,
    spare: Vec<Buffers>,
    mel_len: usize,
    out_len: usize,
    next_id: u64,
    /// Candidates named since the last requested window (window end, newest pair).
    candidates: [Option<usize>; 2],
    /// Seconds per device run (moving average), once measured.
    run_seconds: Option<f64>,
    /// Seconds the CPU took to decode the last window.
    decode_seconds: Option<f64>,
    stats: NpuStats,
}

impl EncoderWorker {
    /// Starts the worker thread owning `encoder`, which runs its parallel parts on a pool of
    /// `threads` threads. `mel_len` / `out_len`: sizes of a window's mel and encoder output.
    pub fn new(
        encoder: Box<dyn Encoder>,
        threads: usize,
        mel_len: usize,
        out_len: usize,
    ) -> std::io::Result<Self> {
        let (done_tx, done) = channel::<Done>();
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            ready: Condvar::new(),
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("whispernpu-npu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("whispernpu-npu".into())
            .spawn(move || run_worker(encoder, pool, &thread_shared, &done_tx))?;
        Ok(Self {
            shared,
            done,
            thread: Some(thread),
            pending: Vec::new(),
            finished: Vec::new(),
            failed: None,
            spare: Vec::new(),
            mel_len,
            out_len,
            next_id: 0,
            candidates: [None; 2],
            run_seconds: None,
            decode_seconds: None,
            stats: NpuStats::default(),
        })
    }

    pub fn stats(&self) -> NpuStats {
        self.stats
    }

    /// Counts a failure that made the caller stop using this encoder.
    pub fn count_failure(&mut self) {
        self.stats.failures += 1;
    }

    fn buffers(&mut self) -> Buffers {
        self.spare.pop().unwrap_or_else(|| Buffers {
            mel: vec![0.0; self.mel_len],
            out: vec![0.0; self.out_len],
        })
    }

    /// Puts a job into the queue slot, which must be empty.
    fn submit(&mut self, seek: usize, guess: Option<Guess>, mel: &[f32]) -> Result<(), Error> {
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(worker_gone());
        }
        let mut buffers = self.buffers();
        buffers.mel.copy_from_slice(mel);
        let id = self.next_id;
        self.next_id += 1;
        let mut slot = self.shared.lock();
        debug_assert!(slot.next.is_none());
        slot.next = Some(Job { id, buffers });
        drop(slot);
        self.shared.ready.notify_one();
        self.pending.push(Pending { id, seek, guess });
        Ok(())
    }

    /// Takes the queued job back if it has not started; returns its description.
    fn unqueue(&mut self) -> Option<Pending> {
        let job = self.shared.lock().next.take()?;
        let at = self.pending.iter().position(|p| p.id == job.id)?;
        self.spare.push(job.buffers);
        Some(self.pending.remove(at))
    }

    /// Files a finished job: a speculation joins `finished` (an earlier pair it supersedes is
    /// discarded); the requested window is returned.
    fn file(&mut self, done: Done) -> Option<Done> {
        self.stats.dispatches = self.stats.dispatches.max(done.dispatches);
        self.run_seconds = Some(match self.run_seconds {
            Some(avg) => 0.75 * avg + 0.25 * done.seconds,
            None => done.seconds,
        });
        let at = self.pending.iter().position(|p| p.id == done.id)?;
        let pending = self.pending.remove(at);
        let Some(guess) = pending.guess else {
            return Some(done);
        };
        if let Err(e) = done.result {
            self.stats.speculative_misses += 1;
            self.spare.push(done.buffers);
            self.failed.get_or_insert(e);
            return None;
        }
        if guess == Guess::Pair {
            let (older, keep): (Vec<Finished>, Vec<Finished>) = std::mem::take(&mut self.finished)
                .into_iter()
                .partition(|f| f.guess == Guess::Pair && f.id < done.id);
            self.finished = keep;
            for f in older {
                self.stats.speculative_misses += 1;
                self.spare.push(f.buffers);
            }
        }
        self.finished.push(Finished {
            id: done.id,
            seek: pending.seek,
            guess,
            buffers: done.buffers,
        });
        None
    }

    /// Files every job that has finished, without waiting.
    fn poll(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            if let Some(done) = self.file(done) {
                // Only `encode` submits requested windows, and it waits for them.
                self.spare.push(done.buffers);
            }
        }
    }

    /// Waits for the next finished job and files it; returns the requested window if it was.
    fn wait_one(&mut self) -> Result<Option<Done>, Error> {
        let done = self.done.recv().map_err(|_| worker_gone())?;
        Ok(self.file(done))
    }

    /// Asks for the window starting at mel frame `seek` with mel `mel` to be encoded in the
    /// background: at once when the device is idle, else in the queue slot (replacing a
    /// queued candidate). Nothing happens when that start is already running, queued or done.
    ///
    /// A [`Guess::Pair`] is only named, not started, while a device run takes longer than the
    /// CPU's decode of a window (`npu-sim`) or before both were measured (the first window):
    /// its encode could not finish before the decode, and every later pair would wait behind
    /// it. [`Guess::WindowEnd`] always starts.
    pub fn speculate(&mut self, seek: usize, mel: &[f32], guess: Guess) {
        if mel.len() != self.mel_len {
            return;
        }
        self.candidates[match guess {
            Guess::WindowEnd => 0,
            Guess::Pair => 1,
        }] = Some(seek);
        self.poll();
        // Until both are measured (the first window) pairs are not started either.
        let slow = match (self.run_seconds, self.decode_seconds) {
            (Some(run), Some(decode)) => run > decode,
            _ => true,
        };
        if guess == Guess::Pair && slow {
            return;
        }
        if self.pending.iter().any(|p| p.seek == seek)
            || self.finished.iter().any(|f| f.seek == seek)
        {
            return;
        }
        if self.unqueue().is_some() {
            self.stats.speculative_dropped += 1;
        }
        // A failed submit means the worker is gone; `encode` reports it.
        let _ = self.submit(seek, Some(guess), mel);
    }

    /// Records how long the CPU took to decode the last window (see [`speculate`](Self::speculate)).
    pub fn note_decode_seconds(&mut self, seconds: f64) {
        self.decode_seconds = Some(seconds);
    }

    /// Discards every speculation: the queued one is dropped, the running one waited for.
    pub fn cancel(&mut self) -> Result<(), Error> {
        self.candidates = [None; 2];
        if self.unqueue().is_some() {
            self.stats.speculative_dropped += 1;
        }
        while !self.pending.is_empty() {
            if let Some(done) = self.wait_one()? {
                self.spare.push(done.buffers);
            }
        }
        for f in std::mem::take(&mut self.finished) {
            self.stats.speculative_misses += 1;
            self.spare.push(f.buffers);
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Encodes the window starting at mel frame `seek` with mel `mel` into `out`: a
    /// speculative result when one matches (a hit), else a run (a speculation for this start
    /// still queued becomes that run). Speculations for other starts that are running are left
    /// to finish; finished ones are discarded. Returns whether it was a hit. On an error `out`
    /// is untouched.
    pub fn encode(&mut self, seek: usize, mel: &[f32], out: &mut [f32]) -> Result<bool, Error> {
        if std::mem::take(&mut self.candidates).contains(&Some(seek)) {
            self.stats.speculative_predicted += 1;
        }
        let same_mel = |m: &[f32]| {
            m.len() == mel.len() && m.iter().zip(mel).all(|(a, b)| a.to_bits() == b.to_bits())
        };
        self.poll();
        // A queued speculation for this start: it becomes the requested run, else it goes.
        let queued = {
            let slot = self.shared.lock();
            slot.next.as_ref().map(|j| (j.id, same_mel(&j.buffers.mel)))
        };
        let mut requested = None;
        if let Some((id, same)) = queued {
            let pending = self.pending.iter_mut().find(|p| p.id == id);
            match pending {
                // If the thread took it meanwhile, it is still this window's run.
                Some(p) if same && p.seek == seek => {
                    p.guess = None;
                    requested = Some(id);
                }
                _ => {
                    if self.unqueue().is_some() {
                        self.stats.speculative_dropped += 1;
                    }
                }
            }
        }
        // A running speculation for this start: wait for it.
        if requested.is_none() && self.pending.iter().any(|p| p.seek == seek) {
            while self.pending.iter().any(|p| p.seek == seek) {
                if let Some(done) = self.wait_one()? {
                    self.spare.push(done.buffers);
                }
            }
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut hit = false;
        if requested.is_none() {
            for f in std::mem::take(&mut self.finished) {
                if !hit && f.seek == seek && same_mel(&f.buffers.mel) {
                    out.copy_from_slice(&f.buffers.out);
                    hit = true;
                    self.stats.speculative_hits += 1;
                } else {
                    self.stats.speculative_misses += 1;
                }
                self.spare.push(f.buffers);
            }
            if hit {
                self.stats.windows += 1;
                return Ok(true);
            }
        }
        if requested.is_none() {
            // The slot is empty: a queued speculation was unqueued above.
            self.submit(seek, None, mel)?;
        }
        loop {
            if let Some(done) = self.wait_one()? {
                let Done {
                    buffers, result, ..
                } = done;
                if result.is_ok() {
                    out.copy_from_slice(&buffers.out);
                }
                self.spare.push(buffers);
                result?;
                break;
            }
        }
        // Finished speculations for other starts are of no use now.
        for f in std::mem::take(&mut self.finished) {
            self.stats.speculative_misses += 1;
            self.spare.push(f.buffers);
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.stats.windows += 1;
        Ok(false)
    }
}

/// The worker thread: runs the slot's job whenever there is one, until the slot is closed.
fn run_worker(
    mut encoder: Box<dyn Encoder>,
    pool: rayon::ThreadPool,
    shared: &Shared,
    done_tx: &Sender<Done>,
) {
    loop {
        let job = {
            let mut slot = shared.lock();
            loop {
                if let Some(job) = slot.next.take() {
                    break job;
                }
                if slot.closed {
                    return;
                }
                slot = shared.ready.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Job { id, mut buffers } = job;
        let start = std::time::Instant::now();
        // A panic in a run is an error like any failed run: the transcriber stops using the
        // NPU and encodes on the CPU (the thread lives on to answer the queue).
        let threads = pool.current_num_threads();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::fault::point("npu-encode");
            pool.install(|| encoder.encode(&buffers.mel, &mut buffers.out, threads))
        }))
        .unwrap_or_else(|payload| {
            Err(Error::Engine {
                engine: "encoder".into(),
                why: format!("panicked: {}", crate::error::panic_message(&*payload)),
            })
        });
        let done = Done {
            id,
            buffers,
            result,
            dispatches: encoder.dispatches(),
            seconds: start.elapsed().as_secs_f64(),
        };
        if done_tx.send(done).is_err() {
            return;
        }
    }
}

impl Drop for EncoderWorker {
    fn drop(&mut self) {
        // Closing the slot ends the thread after the job in flight; a queued job is dropped.
        {
            let mut slot = self.shared.lock();
            slot.closed = true;
            slot.next = None;
        }
        self.shared.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
