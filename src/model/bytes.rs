//! Bounds-checked reading of model files (CTranslate2, GGML, safetensors): a little-endian
//! cursor whose errors name the file and offset, the errors of opening a file, and the
//! conversion of stored f32 / f16 / bf16 arrays to f32.

use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::ModelError;

/// Reads `data` (the contents of `path`) front to back.
pub(super) struct Cursor<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8], path: &'a Path) -> Self {
        Self { data, pos: 0, path }
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| ModelError::Truncated {
                path: self.path.to_path_buf(),
                what: format!(
                    "needs {n} more bytes for {what} at offset {}, file has {}",
                    self.pos,
                    self.data.len()
                ),
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// Bytes left after the cursor.
    pub(super) fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, ModelError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u16(&mut self, what: &str) -> Result<u16, ModelError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn i32(&mut self, what: &str) -> Result<i32, ModelError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An i32 count or extent: non-negative and at most `max`.
    pub(super) fn count(&mut self, what: &str, max: usize) -> Result<usize, ModelError> {
        let pos = self.pos;
        let v = self.i32(what)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v <= max)
            .ok_or_else(|| {
                corrupt(
                    self.path,
                    format!("{what} is {v} at offset {pos} (expected 0 to {max})"),
                )
            })
    }

    /// u16 length (including the NUL), bytes, NUL.
    pub(super) fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.u16(what)? as usize;
        let bytes = self.take(len, what)?;
        let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        String::from_utf8(text.to_vec()).map_err(|_| ModelError::Corrupt {
            path: self.path.to_path_buf(),
            what: format!("{what} at offset {} is not UTF-8", self.pos - len),
        })
    }
}

/// The error of opening or mapping `path`.
pub(super) fn io_error(path: &Path, e: std::io::Error) -> ModelError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ModelError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

pub(super) fn corrupt(path: &Path, what: String) -> ModelError {
    ModelError::Corrupt {
        path: path.to_path_buf(),
        what,
    }
}

/// Little-endian f32 values.
pub(super) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Little-endian f16 values, as f32.
pub(super) fn f16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// Little-endian bf16 values, as f32.
pub(super) fn bf16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// The index of the first NaN or infinity in `data`. Every reader checks each weight it
/// converts, so a weight with a NaN or an infinity is refused at load, named, instead of
/// turning every transcript into silence. Reads the values in blocks with one branch per
/// block: the pass runs at memory speed.
pub(crate) fn first_non_finite(data: &[f32]) -> Option<usize> {
    const BLOCK: usize = 256;
    for (b, block) in data.chunks(BLOCK).enumerate() {
        // An f32 is NaN or infinite exactly when its exponent bits are all set.
        let any = block.iter().fold(false, |acc, v| {
            acc | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        });
        if any {
            let i = block.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Some(b * BLOCK + i);
        }
    }
    None
}

/// Drops the pages of `map[offset .. offset + len]` from the process's resident set once a
/// tensor has been converted: a mapped model file would otherwise count in full towards the
/// peak RSS of loading, on top of the weights made from it (base: 145 MB of file pages). The
/// pages stay in the page cache, and a later read of the range faults them in again from the
/// file, so this changes no data. Whole pages inside the range only; errors (another page size,
/// a platform without `madvise`) are ignored: the pages then simply stay resident.
pub(super) fn release(map: &Mmap, offset: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = offset.next_multiple_of(PAGE);
    let end = offset.saturating_add(len).min(map.len()) / PAGE * PAGE;
    if end > start {
        // SAFETY: the mapping is read-only and backed by the file: dropped pages are read
        // back from it on the next access, with the same contents.
        #[cfg(unix)]
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}
