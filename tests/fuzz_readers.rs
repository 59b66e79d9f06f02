//! Deterministic fuzzing of the model readers (CTranslate2, GGML, safetensors).
//!
//! Real files of each format, written by the crate's converter from the `minimal` random model
//! (tiny.en's layout at width 32: 3.4 MB, so that thousands of loads fit in a CI minute), are
//! mutated case by case: bit flips, truncations, every kind of header field set to 0, 1, 2^31,
//! 2^32 - 1 and 2^64 - 1 (as wide as the field), element types swapped, shapes swapped and
//! changed, tensor names swapped. Each mutated file is loaded as a model. Every load must return
//! a model or an error naming the file, never panic, and never allocate more than a small
//! multiple of the model's size (a counting global allocator in this test binary measures the
//! peak of each load). A smaller set of header mutations runs on the real tiny.en `model.bin`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gstwhispernpu::engine::{ComputeType, WhisperModel};
use gstwhispernpu::model::Tokenizer;
use gstwhispernpu::model::export::{RandomShapes, random_model};
use gstwhispernpu::model::ggml::GgmlType;
use gstwhispernpu::model::safetensors::WriteType;

// ---- allocation accounting ----

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The counters are process-wide: the tests of this file take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- deterministic choices ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

// ---- the files and their fields ----

/// A header field: where it is and how wide (bytes).
#[derive(Debug, Clone, Copy)]
struct Field {
    offset: usize,
    size: usize,
}

/// One tensor's record in a file: its extents and name, for swaps.
#[derive(Debug, Clone)]
struct Record {
    /// (offset, size) of each extent field.
    dims: Vec<(usize, usize)>,
    /// Offset and length of the name bytes.
    name: (usize, usize),
    /// The type field.
    ty: (usize, usize),
}

struct Layout2 {
    fields: Vec<Field>,
    records: Vec<Record>,
}

fn le(bytes: &[u8], at: usize, size: usize) -> u64 {
    let mut v = 0u64;
    for i in 0..size {
        v |= u64::from(bytes[at + i]) << (8 * i);
    }
    v
}

/// The fields of a CTranslate2 `model.bin` (version 6 as the converter writes it).
fn ct2_layout(b: &[u8]) -> Layout2 {
    let mut fields = Vec::new();
    let mut records = Vec::new();
    let mut pos = 0;
    let num = |fields: &mut Vec<Field>, pos: &mut usize, size: usize| {
        fields.push(Field { offset: *pos, size });
        let v = le(b, *pos, size);
        *pos += size;
        v
    };
    num(&mut fields, &mut pos, 4); // version
    let len = num(&mut fields, &mut pos, 2) as usize; // spec name
    pos += len;
    num(&mut fields, &mut pos, 4); // revision
    let count = num(&mut fields, &mut pos, 4);
    for _ in 0..count {
        let name_len = num(&mut fields, &mut pos, 2) as usize;
        let name = (pos, name_len.saturating_sub(1));
        pos += name_len;
        let rank = num(&mut fields, &mut pos, 1) as usize;
        let mut dims = Vec::new();
        for _ in 0..rank {
            dims.push((pos, 4));
            num(&mut fields, &mut pos, 4);
        }
        let ty = (pos, 1);
        num(&mut fields, &mut pos, 1);
        let bytes = num(&mut fields, &mut pos, 4) as usize;
        pos += bytes;
        records.push(Record { dims, name, ty });
    }
    let aliases = num(&mut fields, &mut pos, 4);
    for _ in 0..aliases {
        for _ in 0..2 {
            let len = num(&mut fields, &mut pos, 2) as usize;
            pos += len;
        }
    }
    assert_eq!(pos, b.len(), "CTranslate2 layout walk");
    Layout2 { fields, records }
}

/// The fields of a GGML file (as the converter writes it).
fn ggml_layout(b: &[u8]) -> Layout2 {
    let mut fields = Vec::new();
    let mut records = Vec::new();
    let mut pos = 0;
    let num = |fields: &mut Vec<Field>, pos: &mut usize| {
        fields.push(Field {
            offset: *pos,
            size: 4,
        });
        let v = le(b, *pos, 4);
        *pos += 4;
        v
    };
    num(&mut fields, &mut pos); // magic
    for _ in 0..11 {
        num(&mut fields, &mut pos); // hyper-parameters, ftype
    }
    let n_mel = num(&mut fields, &mut pos) as usize;
    let n_fft = num(&mut fields, &mut pos) as usize;
    pos += n_mel * n_fft * 4;
    let tokens = num(&mut fields, &mut pos);
    for i in 0..tokens {
        let before = fields.len();
        let len = num(&mut fields, &mut pos) as usize;
        // A few token lengths are enough; the rest would crowd the field list.
        if i > 8 && i < tokens - 2 {
            fields.truncate(before);
        }
        pos += len;
    }
    while pos < b.len() {
        let n_dims = num(&mut fields, &mut pos) as usize;
        let name_len = num(&mut fields, &mut pos) as usize;
        let ty_at = pos;
        let code = num(&mut fields, &mut pos) as i32;
        let mut dims = Vec::new();
        let mut numel = 1usize;
        for _ in 0..n_dims {
            dims.push((pos, 4));
            numel *= num(&mut fields, &mut pos) as usize;
        }
        let name = (pos, name_len);
        pos += name_len;
        let bytes = match code {
            0 => numel * 4,
            1 => numel * 2,
            8 => numel / 32 * 34,
            other => panic!("converter wrote ggml type {other}"),
        };
        pos += bytes;
        records.push(Record {
            dims,
            name,
            ty: (ty_at, 4),
        });
    }
    Layout2 { fields, records }
}

/// A model written by the converter, and where the mutated copy goes.
struct Subject {
    format: &'static str,
    /// The file that is mutated.
    file: PathBuf,
    /// What is loaded: the directory, or the file itself.
    load_path: PathBuf,
    /// The mutated copy's file and load path.
    work_file: PathBuf,
    work_load: PathBuf,
    original: Vec<u8>,
    /// Bytes of everything the load reads (model file, vocabulary, configuration).
    total_bytes: usize,
}

fn dir_bytes(path: &Path) -> usize {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0, |m| m.len() as usize);
    }
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.metadata().map_or(0, |m| m.len() as usize))
                .sum()
        })
        .unwrap_or(0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn subjects(root: &Path) -> Vec<Subject> {
    let tiny = common::model_dir("tiny.en");
    let vocab = Tokenizer::load(&tiny, 51864).expect("tiny.en tokenizer");
    let model = random_model(RandomShapes::Minimal, 11, &vocab).expect("minimal model");
    let mut out = Vec::new();
    let ct2 = root.join("ct2");
    model.write_ct2(&ct2, WriteType::F16).expect("write ct2");
    let st = root.join("safetensors");
    model
        .write_safetensors(&st, WriteType::F16)
        .expect("write safetensors");
    let ggml = root.join("ggml");
    std::fs::create_dir_all(&ggml).unwrap();
    model
        .write_ggml(&ggml.join("model.bin"), GgmlType::F16)
        .expect("write ggml");
    for (format, dir, file, load_is_dir) in [
        ("ct2", &ct2, "model.bin", true),
        ("ggml", &ggml, "model.bin", false),
        ("safetensors", &st, "model.safetensors", true),
    ] {
        let work = root.join(format!("{format}-work"));
        copy_dir(dir, &work);
        let original = std::fs::read(dir.join(file)).unwrap();
        out.push(Subject {
            format,
            file: dir.join(file),
            load_path: if load_is_dir {
                dir.clone()
            } else {
                dir.join(file)
            },
            work_file: work.join(file),
            work_load: if load_is_dir {
                work.clone()
            } else {
                work.join(file)
            },
            original,
            total_bytes: dir_bytes(dir),
        });
    }
    out
}

// ---- mutations ----

const SPECIAL: [u64; 5] = [0, 1, 1 << 31, (1 << 32) - 1, u64::MAX];

fn put(bytes: &mut [u8], at: usize, size: usize, value: u64) {
    for i in 0..size {
        bytes[at + i] = (value >> (8 * i)) as u8;
    }
}

/// A mutated file and what was done to it, kept as its difference from the original (the
/// original with `original[start..end]` replaced by `replacement`): thousands of whole copies
/// of a 4 MB file would not fit in memory.
struct Case {
    what: String,
    start: usize,
    end: usize,
    replacement: Vec<u8>,
}

impl Case {
    fn new(what: String, original: &[u8], mutated: &[u8]) -> Self {
        let prefix = original
            .iter()
            .zip(mutated)
            .take_while(|(a, b)| a == b)
            .count();
        let room = original.len().min(mutated.len()) - prefix;
        let suffix = original
            .iter()
            .rev()
            .zip(mutated.iter().rev())
            .take(room)
            .take_while(|(a, b)| a == b)
            .count();
        Self {
            what,
            start: prefix,
            end: original.len() - suffix,
            replacement: mutated[prefix..mutated.len() - suffix].to_vec(),
        }
    }

    /// Turns `file` (holding `original`) into the mutated file.
    fn apply(&self, file: &Path, original: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        if self.replacement.len() == self.end - self.start {
            f.write_all_at(&self.replacement, self.start as u64)
                .unwrap();
            return;
        }
        let mut tail = self.replacement.clone();
        tail.extend_from_slice(&original[self.end..]);
        f.write_all_at(&tail, self.start as u64).unwrap();
        f.set_len((self.start + tail.len()) as u64).unwrap();
    }

    /// Puts `original` back into `file`.
    fn undo(&self, file: &Path, original: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        let end = if self.replacement.len() == self.end - self.start {
            self.end
        } else {
            original.len()
        };
        f.write_all_at(&original[self.start..end], self.start as u64)
            .unwrap();
        f.set_len(original.len() as u64).unwrap();
    }
}

fn binary_cases(original: &[u8], layout: &Layout2, type_codes: &[u64], seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    let header_end = layout
        .fields
        .iter()
        .map(|f| f.offset + f.size)
        .max()
        .unwrap_or(64);
    // Bit flips: three in four among the header fields, the others anywhere (mostly weight
    // data, whose flips either load or make a weight non-finite).
    for i in 0..600 {
        let at = if i % 4 != 0 {
            let f = layout.fields[rng.below(layout.fields.len())];
            f.offset + rng.below(f.size)
        } else {
            rng.below(original.len())
        };
        let bit = rng.below(8);
        let mut bytes = original.to_vec();
        bytes[at] ^= 1 << bit;
        cases.push(Case::new(
            format!("bit {bit} of byte {at} flipped"),
            original,
            &bytes,
        ));
    }
    // Truncations: random lengths, weighted toward the header.
    for i in 0..300 {
        let len = if i % 3 == 0 {
            rng.below(original.len())
        } else {
            rng.below(header_end.min(original.len()))
        };
        cases.push(Case::new(
            format!("truncated to {len} bytes"),
            original,
            &original[..len],
        ));
    }
    // Header fields set to special values: every field of a sample of up to 200.
    let mut picked: Vec<Field> = layout.fields.clone();
    while picked.len() > 200 {
        let at = rng.below(picked.len());
        picked.remove(at);
    }
    for f in &picked {
        for v in SPECIAL {
            let mut bytes = original.to_vec();
            put(&mut bytes, f.offset, f.size, v);
            cases.push(Case::new(
                format!("field at {} ({} bytes) set to {v:#x}", f.offset, f.size),
                original,
                &bytes,
            ));
        }
    }
    // Element types swapped.
    for r in layout.records.iter() {
        for &code in type_codes {
            if rng.below(4) != 0 {
                continue;
            }
            let mut bytes = original.to_vec();
            put(&mut bytes, r.ty.0, r.ty.1, code);
            cases.push(Case::new(
                format!("type of the tensor at {} set to {code}", r.name.0),
                original,
                &bytes,
            ));
        }
    }
    // Shapes: two extents of a tensor swapped, or an extent taken from another tensor.
    for _ in 0..150 {
        let r = &layout.records[rng.below(layout.records.len())];
        if r.dims.is_empty() {
            continue;
        }
        let mut bytes = original.to_vec();
        let a = r.dims[rng.below(r.dims.len())];
        let what = if r.dims.len() > 1 && rng.below(2) == 0 {
            let b = r.dims[rng.below(r.dims.len())];
            let (va, vb) = (le(original, a.0, a.1), le(original, b.0, b.1));
            put(&mut bytes, a.0, a.1, vb);
            put(&mut bytes, b.0, b.1, va);
            format!("extents at {} and {} swapped", a.0, b.0)
        } else {
            let other = &layout.records[rng.below(layout.records.len())];
            let Some(&b) = other.dims.first() else {
                continue;
            };
            put(&mut bytes, a.0, a.1, le(original, b.0, b.1));
            format!("extent at {} set to the one at {}", a.0, b.0)
        };
        cases.push(Case::new(what, original, &bytes));
    }
    // Names: two tensors' names of the same length swapped, or a name's bytes scrambled.
    for _ in 0..150 {
        let a = &layout.records[rng.below(layout.records.len())];
        let b = &layout.records[rng.below(layout.records.len())];
        let mut bytes = original.to_vec();
        let what = if a.name.1 == b.name.1 && a.name.0 != b.name.0 {
            let (x, y) = (
                original[a.name.0..a.name.0 + a.name.1].to_vec(),
                original[b.name.0..b.name.0 + b.name.1].to_vec(),
            );
            bytes[a.name.0..a.name.0 + a.name.1].copy_from_slice(&y);
            bytes[b.name.0..b.name.0 + b.name.1].copy_from_slice(&x);
            format!("names at {} and {} swapped", a.name.0, b.name.0)
        } else {
            let at = a.name.0 + rng.below(a.name.1.max(1));
            bytes[at] = [b'.', b'/', b'_', 0xff, b'9'][rng.below(5)];
            format!("name byte at {at} replaced")
        };
        cases.push(Case::new(what, original, &bytes));
    }
    cases
}

/// Safetensors: the 8-byte header length and the JSON header's fields.
fn safetensors_cases(original: &[u8], seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let header_len = le(original, 0, 8) as usize;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&original[8..8 + header_len]).unwrap();
    let data = &original[8 + header_len..];
    let names: Vec<String> = json
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let rebuild = |json: &serde_json::Map<String, serde_json::Value>| {
        let text = serde_json::to_vec(json).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(data);
        out
    };
    let mut cases = Vec::new();
    for i in 0..600 {
        let at = if i % 4 != 0 {
            rng.below(8 + header_len)
        } else {
            rng.below(original.len())
        };
        let bit = rng.below(8);
        let mut bytes = original.to_vec();
        bytes[at] ^= 1 << bit;
        cases.push(Case::new(
            format!("bit {bit} of byte {at} flipped"),
            original,
            &bytes,
        ));
    }
    for i in 0..300 {
        let len = if i % 3 == 0 {
            rng.below(original.len())
        } else {
            rng.below(8 + header_len)
        };
        cases.push(Case::new(
            format!("truncated to {len} bytes"),
            original,
            &original[..len],
        ));
    }
    for v in SPECIAL {
        let mut bytes = original.to_vec();
        put(&mut bytes, 0, 8, v);
        cases.push(Case::new(
            format!("header length set to {v:#x}"),
            original,
            &bytes,
        ));
    }
    let dtypes = ["F32", "F16", "BF16", "I64", "U8", "F64", "", "f16"];
    while cases.len() < 2100 {
        let name = &names[rng.below(names.len())];
        let mut json = json.clone();
        let entry = json.get_mut(name).unwrap();
        let what = match rng.below(5) {
            0 => {
                let d = dtypes[rng.below(dtypes.len())];
                entry["dtype"] = d.into();
                format!("dtype of `{name}` set to {d:?}")
            }
            1 => {
                let which = rng.below(2);
                let v = SPECIAL[rng.below(SPECIAL.len())];
                entry["data_offsets"][which] = v.into();
                format!("data_offsets[{which}] of `{name}` set to {v:#x}")
            }
            2 => {
                let shape = entry["shape"].as_array().cloned().unwrap_or_default();
                let v = SPECIAL[rng.below(SPECIAL.len())];
                let mut shape = shape;
                if shape.is_empty() {
                    shape.push(v.into());
                } else {
                    let at = rng.below(shape.len());
                    shape[at] = v.into();
                }
                entry["shape"] = shape.into();
                format!("an extent of `{name}` set to {v:#x}")
            }
            3 => {
                let mut shape = entry["shape"].as_array().cloned().unwrap_or_default();
                shape.reverse();
                entry["shape"] = shape.into();
                format!("shape of `{name}` reversed")
            }
            _ => {
                let other = names[rng.below(names.len())].clone();
                let (a, b) = (json[name].clone(), json[&other].clone());
                json.insert(name.clone(), b);
                json.insert(other.clone(), a);
                format!("`{name}` and `{other}` swapped")
            }
        };
        cases.push(Case::new(what, original, &rebuild(&json)));
    }
    cases
}

// ---- running a case ----

enum Outcome {
    Loaded,
    Refused,
}

/// Loads the mutated copy; fails the test on a panic, an error that does not name the file or
/// an allocation peak over `limit` bytes.
fn run_case(subject: &Subject, case: &Case, limit: usize, failures: &mut Vec<String>) -> Outcome {
    // The work file holds the original between cases: only the changed range is written, and
    // put back afterwards.
    case.apply(&subject.work_file, &subject.original);
    let outcome = run_loaded_case(subject, case, limit, failures);
    case.undo(&subject.work_file, &subject.original);
    outcome
}

fn run_loaded_case(
    subject: &Subject,
    case: &Case,
    limit: usize,
    failures: &mut Vec<String>,
) -> Outcome {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let load = || WhisperModel::load_with(&subject.work_load, ComputeType::F32);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let tag = format!("{} ({}):", subject.format, case.what);
    if peak > limit {
        failures.push(format!(
            "{tag} allocated {peak} bytes, over the limit of {limit}"
        ));
    }
    match result {
        Err(payload) => {
            failures.push(format!(
                "{tag} PANIC: {}",
                gstwhispernpu::error::panic_message(&*payload)
            ));
            Outcome::Refused
        }
        Ok(Ok(_model)) => Outcome::Loaded,
        Ok(Err(e)) => {
            let text = e.to_string();
            let dir = subject.work_load.to_string_lossy().into_owned();
            if !text.contains(dir.as_str()) {
                failures.push(format!("{tag} error does not name the file: {text}"));
            }
            Outcome::Refused
        }
    }
}

/// The allocation peak of a load may be this many times the bytes it reads.
const ALLOC_FACTOR: usize = 6;

#[test]
fn mutated_model_files_load_or_fail_with_a_named_error() {
    let _serial = serial();
    let root = std::env::temp_dir().join(format!("whispernpu-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let subjects = subjects(&root);
    let mut failures = Vec::new();
    let t0 = Instant::now();
    for (i, subject) in subjects.iter().enumerate() {
        let started = Instant::now();
        // The unmutated file loads, and sets the allocation yardstick.
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let clean = WhisperModel::load_with(&subject.load_path, ComputeType::F32);
        let clean_peak = PEAK.load(Ordering::Relaxed) - base;
        assert!(
            clean.is_ok(),
            "{}: the unmutated file does not load: {:?}",
            subject.format,
            clean.err()
        );
        drop(clean);
        let limit = ALLOC_FACTOR * subject.total_bytes;
        assert!(
            clean_peak <= limit,
            "{}: a clean load allocates {clean_peak} bytes, over {ALLOC_FACTOR} x {} bytes",
            subject.format,
            subject.total_bytes
        );
        let seed = 0x9e37_79b9 + i as u64;
        let cases = match subject.format {
            "ct2" => binary_cases(
                &subject.original,
                &ct2_layout(&subject.original),
                &[0, 1, 2, 3, 4, 5, 6, 255],
                seed,
            ),
            "ggml" => binary_cases(
                &subject.original,
                &ggml_layout(&subject.original),
                &[0, 1, 2, 3, 6, 7, 8, 9, 99, u64::from(u32::MAX)],
                seed,
            ),
            _ => safetensors_cases(&subject.original, seed),
        };
        assert!(
            cases.len() >= 2000,
            "{}: only {} cases",
            subject.format,
            cases.len()
        );
        let (mut loaded, mut refused) = (0, 0);
        for case in &cases {
            match run_case(subject, case, limit, &mut failures) {
                Outcome::Loaded => loaded += 1,
                Outcome::Refused => refused += 1,
            }
        }
        eprintln!(
            "{}: {} cases ({} loaded, {} refused with a named error) in {:.1} s; {} bytes read \
             per load, clean load peak {:.2} x that, limit {ALLOC_FACTOR} x",
            subject.format,
            cases.len(),
            loaded,
            refused,
            started.elapsed().as_secs_f64(),
            subject.total_bytes,
            clean_peak as f64 / subject.total_bytes as f64
        );
        let _ = &subject.file;
    }
    eprintln!("all formats: {:.1} s", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        failures.is_empty(),
        "{} of the cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Header mutations of the real tiny.en `model.bin`: the variable table's fields and
/// truncations inside it, which fail before any weight is converted.
#[test]
fn real_tiny_en_header_mutations_fail_with_a_named_error() {
    let _serial = serial();
    let tiny = common::model_dir("tiny.en");
    let root = std::env::temp_dir().join(format!("whispernpu-fuzz-tiny-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    copy_dir(&tiny, &root);
    let original = std::fs::read(tiny.join("model.bin")).unwrap();
    let layout = ct2_layout(&original);
    let subject = Subject {
        format: "tiny.en ct2",
        file: tiny.join("model.bin"),
        load_path: tiny.clone(),
        work_file: root.join("model.bin"),
        work_load: root.clone(),
        original: original.clone(),
        total_bytes: dir_bytes(&tiny),
    };
    let mut rng = Rng(7);
    let mut failures = Vec::new();
    let mut cases = Vec::new();
    // Fields that change the meaning of the table (counts, lengths, ranks, extents, types,
    // byte counts), each set to each special value.
    for _ in 0..40 {
        let f = layout.fields[rng.below(layout.fields.len())];
        let v = SPECIAL[rng.below(SPECIAL.len())];
        let mut bytes = original.clone();
        put(&mut bytes, f.offset, f.size, v);
        cases.push(Case::new(
            format!("field at {} ({} bytes) set to {v:#x}", f.offset, f.size),
            &original,
            &bytes,
        ));
    }
    for _ in 0..20 {
        let len = rng.below(original.len());
        cases.push(Case::new(
            format!("truncated to {len} bytes"),
            &original,
            &original[..len],
        ));
    }
    let limit = ALLOC_FACTOR * subject.total_bytes;
    let mut refused = 0;
    for case in &cases {
        if let Outcome::Refused = run_case(&subject, case, limit, &mut failures) {
            refused += 1;
        }
    }
    eprintln!(
        "tiny.en: {} header mutations, {refused} refused with a named error",
        cases.len()
    );
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
