//! The NPU encoder on its own thread, so that the device can encode the next window while the
//! CPU decodes this one.
//!
//! The next window's start depends on this window's decode (openai's loop seeks to the last
//! timestamp, or by the whole window when it ends on a single timestamp or is skipped as
//! silence), so the next window is encoded *speculatively* ([`EncoderWorker::speculate`]) at
//! the likeliest start (`seek + segment size`). When the transcriber then asks for a window
//! ([`EncoderWorker::encode`]), the speculative result is used only if it was computed from
//! the same start and bit-identical mel (the streaming normalisation and the tail padding are
//! inside the mel, so comparing it is exact whatever produced it); otherwise it is discarded
//! (a miss: one extra dispatch) and the window is encoded then.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::host::{NpuError, WindowEncoder};

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
    /// Speculative encodes discarded (another start or different mel, or abandoned by a reset).
    pub speculative_misses: u64,
    /// Runs that failed or timed out (the transcriber then uses the CPU encoder).
    pub failures: u64,
}

struct Job {
    mel: Vec<f32>,
    out: Vec<f32>,
}

struct Done {
    mel: Vec<f32>,
    out: Vec<f32>,
    result: Result<(), NpuError>,
    dispatches: u64,
}

/// A window encoder on a worker thread, with one speculative window in flight at most.
pub struct EncoderWorker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// The start (mel frame) of the speculative window in flight.
    speculation: Option<usize>,
    /// The job buffers, here when no job is in flight.
    mel: Vec<f32>,
    out: Vec<f32>,
    stats: NpuStats,
}

impl EncoderWorker {
    /// Starts the worker thread owning `encoder`, which runs its parallel parts on a pool of
    /// `threads` threads. `mel_len` / `out_len`: sizes of a window's mel and encoder output.
    pub fn new(
        encoder: Box<dyn WindowEncoder>,
        threads: usize,
        mel_len: usize,
        out_len: usize,
    ) -> std::io::Result<Self> {
        let (jobs, job_rx) = channel::<Job>();
        let (done_tx, done) = channel::<Done>();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("whispernpu-npu-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let thread = std::thread::Builder::new()
            .name("whispernpu-npu".into())
            .spawn(move || {
                let mut encoder = encoder;
                while let Ok(mut job) = job_rx.recv() {
                    let result = pool.install(|| encoder.encode(&job.mel, &mut job.out));
                    let done = Done {
                        mel: job.mel,
                        out: job.out,
                        result,
                        dispatches: encoder.dispatches(),
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            speculation: None,
            mel: vec![0.0; mel_len],
            out: vec![0.0; out_len],
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

    fn submit(&mut self, mel: &[f32]) -> Result<(), NpuError> {
        self.mel.copy_from_slice(mel);
        let job = Job {
            mel: std::mem::take(&mut self.mel),
            out: std::mem::take(&mut self.out),
        };
        let sent = self.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            Some(Err(std::sync::mpsc::SendError(job))) => {
                (self.mel, self.out) = (job.mel, job.out);
                Err(NpuError::WorkerGone)
            }
            None => Err(NpuError::WorkerGone),
        }
    }

    fn collect(&mut self) -> Result<(), NpuError> {
        let done = self.done.recv().map_err(|_| NpuError::WorkerGone)?;
        (self.mel, self.out) = (done.mel, done.out);
        self.stats.dispatches = done.dispatches;
        done.result
    }

    /// Starts encoding the window starting at mel frame `seek` with mel `mel` in the
    /// background. Does nothing when a speculative window is already in flight.
    pub fn speculate(&mut self, seek: usize, mel: &[f32]) {
        if self.speculation.is_some() || mel.len() != self.mel.len() {
            return;
        }
        if self.submit(mel).is_ok() {
            self.speculation = Some(seek);
        }
    }

    /// Waits for the speculative window in flight, if any, and discards it (a miss).
    pub fn cancel(&mut self) -> Result<(), NpuError> {
        if self.speculation.take().is_some() {
            self.stats.speculative_misses += 1;
            self.collect()?;
        }
        Ok(())
    }

    /// Encodes the window starting at mel frame `seek` with mel `mel` into `out`: the
    /// speculative result when it matches, else a new run. Returns whether it was a hit. On an
    /// error `out` is untouched.
    pub fn encode(&mut self, seek: usize, mel: &[f32], out: &mut [f32]) -> Result<bool, NpuError> {
        if let Some(spec_seek) = self.speculation.take() {
            let result = self.collect();
            let same = spec_seek == seek
                && self.mel.len() == mel.len()
                && self
                    .mel
                    .iter()
                    .zip(mel)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            if result.is_ok() && same {
                out.copy_from_slice(&self.out);
                self.stats.speculative_hits += 1;
                self.stats.windows += 1;
                return Ok(true);
            }
            self.stats.speculative_misses += 1;
            result?;
        }
        self.submit(mel)?;
        self.collect()?;
        out.copy_from_slice(&self.out);
        self.stats.windows += 1;
        Ok(false)
    }
}

impl Drop for EncoderWorker {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after the job in flight.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
