//! Whisper's byte-level BPE tokenizer: exact decoding (a UTF-8 character may be split across
//! tokens, so text is assembled from bytes) and encoding for prompts (GPT-2 pre-tokenisation and
//! BPE merges from `tokenizer.json`).

use std::collections::HashMap;
use std::path::Path;

use fancy_regex::Regex;

use crate::error::ModelError;

/// Ids of the special tokens of one vocabulary (REFERENCE.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    pub sot_lm: u32,
    pub sot_prev: u32,
    pub no_speech: u32,
    pub no_timestamps: u32,
    pub timestamp_begin: u32,
    /// First language token (sot + 1); multilingual vocabularies only.
    pub language_begin: u32,
    /// Number of language tokens (0 for English-only models).
    pub n_languages: u32,
}

impl SpecialTokens {
    /// The layout of a vocabulary of `n_vocab` tokens (English-only 51864, multilingual 51865,
    /// large-v3 51866).
    pub fn for_vocab_size(n_vocab: usize) -> Option<Self> {
        let (eot, translate) = match n_vocab {
            51864 => (50256, 50357),
            51865 => (50257, 50358),
            51866 => (50257, 50359),
            _ => return None,
        };
        Some(Self {
            eot,
            sot: eot + 1,
            translate,
            transcribe: translate + 1,
            sot_lm: translate + 2,
            sot_prev: translate + 3,
            no_speech: translate + 4,
            no_timestamps: translate + 5,
            timestamp_begin: translate + 6,
            language_begin: eot + 2,
            n_languages: if n_vocab == 51864 {
                0
            } else {
                translate - eot - 2
            },
        })
    }
}

/// GPT-2's reversible byte ↔ printable-character table: byte `b` is written as `table[b]`.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut extra = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    table
}

const PRETOKENIZE: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    pub specials: SpecialTokens,
    /// Token strings as in the vocabulary file (byte-level form).
    strings: Vec<String>,
    /// Raw bytes of each token.
    bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    /// BPE merge ranks, keyed by the pair's two strings joined with a space.
    merges: Option<HashMap<(String, String), usize>>,
    byte_chars: [char; 256],
    pretokenize: Regex,
    /// Language codes, in token order from `specials.language_begin`.
    languages: Vec<String>,
}

fn corrupt(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, ModelError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

impl Tokenizer {
    /// Reads `vocabulary.txt` (or `vocabulary.json`) and, when present, the BPE merges of
    /// `tokenizer.json` from a model directory. `n_vocab` is the model's vocabulary size.
    pub fn load(dir: &Path, n_vocab: usize) -> Result<Self, ModelError> {
        let txt = dir.join("vocabulary.txt");
        let json = dir.join("vocabulary.json");
        let strings: Vec<String> = if let Some(bytes) = read(&txt)? {
            let text = String::from_utf8(bytes).map_err(|_| corrupt(&txt, "not UTF-8"))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            text.split('\n')
                .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
                .collect()
        } else if let Some(bytes) = read(&json)? {
            serde_json::from_slice(&bytes)
                .map_err(|e| corrupt(&json, format!("invalid JSON: {e}")))?
        } else {
            return Err(ModelError::NotFound { path: txt });
        };
        let vocab_path = if txt.exists() { txt } else { json };
        let specials =
            SpecialTokens::for_vocab_size(n_vocab).ok_or_else(|| ModelError::Unsupported {
                path: dir.join("model.bin"),
                what: format!("vocabulary size {n_vocab} (expected 51864, 51865 or 51866)"),
            })?;
        if strings.len() < specials.timestamp_begin as usize {
            return Err(corrupt(
                &vocab_path,
                format!(
                    "{} tokens, but the model needs at least {}",
                    strings.len(),
                    specials.timestamp_begin
                ),
            ));
        }
        if strings[specials.eot as usize] != "<|endoftext|>"
            || strings[specials.sot as usize] != "<|startoftranscript|>"
        {
            return Err(corrupt(
                &vocab_path,
                format!(
                    "token {} is `{}` and {} is `{}`, expected <|endoftext|> and <|startoftranscript|>",
                    specials.eot,
                    strings[specials.eot as usize],
                    specials.sot,
                    strings[specials.sot as usize]
                ),
            ));
        }
        let byte_chars = bytes_to_unicode();
        let char_bytes: HashMap<char, u8> = byte_chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let bytes = strings
            .iter()
            .map(|s| {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    match char_bytes.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend(c.to_string().as_bytes()),
                    }
                }
                out
            })
            .collect();
        let ids = strings
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();

        let tok_json = dir.join("tokenizer.json");
        let merges = match read(&tok_json)? {
            None => None,
            Some(b) => {
                let v: serde_json::Value = serde_json::from_slice(&b)
                    .map_err(|e| corrupt(&tok_json, format!("invalid JSON: {e}")))?;
                let list = v
                    .pointer("/model/merges")
                    .and_then(|m| m.as_array())
                    .ok_or_else(|| corrupt(&tok_json, "no model.merges list"))?;
                let mut ranks = HashMap::with_capacity(list.len());
                for (rank, m) in list.iter().enumerate() {
                    let pair = match m {
                        serde_json::Value::String(s) => s
                            .split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string())),
                        serde_json::Value::Array(a) if a.len() == 2 => {
                            match (a[0].as_str(), a[1].as_str()) {
                                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                                _ => None,
                            }
                        }
                        _ => None,
                    }
                    .ok_or_else(|| corrupt(&tok_json, format!("merge #{rank} is malformed")))?;
                    ranks.entry(pair).or_insert(rank);
                }
                Some(ranks)
            }
        };

        let languages = if specials.n_languages == 0 {
            Vec::new()
        } else {
            (0..specials.n_languages)
                .map(|i| {
                    let s = &strings[(specials.language_begin + i) as usize];
                    s.strip_prefix("<|")
                        .and_then(|s| s.strip_suffix("|>"))
                        .map(str::to_string)
                        .ok_or_else(|| {
                            corrupt(
                                &vocab_path,
                                format!(
                                    "token {} `{s}` is not a language token",
                                    specials.language_begin + i
                                ),
                            )
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let pretokenize =
            Regex::new(PRETOKENIZE).map_err(|e| corrupt(dir, format!("tokenizer pattern: {e}")))?;
        Ok(Self {
            specials,
            strings,
            bytes,
            ids,
            merges,
            byte_chars,
            pretokenize,
            languages,
        })
    }

    pub fn is_multilingual(&self) -> bool {
        self.specials.n_languages > 0
    }

    /// Number of tokens in the vocabulary file.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Text of text tokens (ids < eot); special and timestamp tokens are skipped. Invalid UTF-8
    /// becomes U+FFFD as with Python's `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let eot = self.specials.eot;
        let mut buf = Vec::new();
        for &id in ids {
            if id < eot {
                if let Some(b) = self.bytes.get(id as usize) {
                    buf.extend_from_slice(b);
                }
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Text of all tokens, special and timestamp tokens written as in the vocabulary.
    pub fn decode_with_specials(&self, ids: &[u32]) -> String {
        let mut buf = Vec::new();
        for &id in ids {
            if let Some(b) = self.bytes.get(id as usize) {
                buf.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Encodes text (GPT-2 pre-tokenisation + BPE merges) to ids; no special tokens. Needs the
    /// merges of `tokenizer.json`; without them it falls back to the longest vocabulary match,
    /// which is exact for most text but not guaranteed to equal the BPE segmentation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in self.pretokenize.find_iter(text).filter_map(Result::ok) {
            let symbols: Vec<String> = piece
                .as_str()
                .bytes()
                .map(|b| self.byte_chars[b as usize].to_string())
                .collect();
            let merged = match &self.merges {
                Some(ranks) => bpe(symbols, ranks),
                None => self.greedy_longest(symbols),
            };
            for s in merged {
                match self.ids.get(&s) {
                    Some(&id) => out.push(id),
                    // Cannot happen with a consistent vocabulary: fall back to byte tokens.
                    None => out.extend(
                        s.chars()
                            .filter_map(|c| self.ids.get(&c.to_string()).copied()),
                    ),
                }
            }
        }
        out
    }

    fn greedy_longest(&self, symbols: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < symbols.len() {
            let mut j = symbols.len();
            while j > i + 1 && !self.ids.contains_key(&symbols[i..j].concat()) {
                j -= 1;
            }
            out.push(symbols[i..j].concat());
            i = j;
        }
        out
    }

    /// openai `split_tokens_on_unicode`: groups tokens so each group decodes to whole
    /// characters; returns the groups' texts and tokens.
    pub fn split_tokens_on_unicode(&self, ids: &[u32]) -> (Vec<String>, Vec<Vec<u32>>) {
        let full: Vec<char> = self.decode_with_specials(ids).chars().collect();
        let mut words = Vec::new();
        let mut word_tokens = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        let mut offset = 0;
        for &id in ids {
            current.push(id);
            let decoded = self.decode_with_specials(&current);
            let chars: Vec<char> = decoded.chars().collect();
            let complete = match chars.iter().position(|&c| c == '\u{fffd}') {
                None => true,
                Some(at) => full.get(offset + at) == Some(&'\u{fffd}'),
            };
            if complete {
                offset += chars.len();
                words.push(decoded);
                word_tokens.push(std::mem::take(&mut current));
            }
        }
        (words, word_tokens)
    }

    /// Language token of a code ("en"; "en-US" and "EN" are accepted as "en").
    pub fn language_token(&self, code: &str) -> Option<u32> {
        let base = code
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        self.languages
            .iter()
            .position(|l| *l == base)
            .map(|i| self.specials.language_begin + i as u32)
    }

    /// Language code of a language token.
    pub fn language_code(&self, token: u32) -> Option<&str> {
        let i = token.checked_sub(self.specials.language_begin)? as usize;
        self.languages.get(i).map(String::as_str)
    }

    /// Ids of all language tokens of this vocabulary.
    pub fn language_tokens(&self) -> std::ops::Range<u32> {
        self.specials.language_begin..self.specials.language_begin + self.specials.n_languages
    }

    /// The id of the token whose text is exactly `text` (e.g. `" "` → 220), if any.
    pub fn single_token(&self, text: &str) -> Option<u32> {
        let s: String = text.bytes().map(|b| self.byte_chars[b as usize]).collect();
        self.ids.get(&s).copied()
    }

    /// The id of a token by its vocabulary string (`Ġ` for space, `<|endoftext|>`...).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The vocabulary string of a token.
    pub fn token_str(&self, id: u32) -> Option<&str> {
        self.strings.get(id as usize).map(String::as_str)
    }
}

/// Byte-level BPE: repeatedly merges the adjacent pair with the lowest rank.
fn bpe(mut symbols: Vec<String>, ranks: &HashMap<(String, String), usize>) -> Vec<String> {
    let mut key = (String::new(), String::new());
    loop {
        let mut best: Option<(usize, usize)> = None;
        for i in 0..symbols.len().saturating_sub(1) {
            key.0.clear();
            key.0.push_str(&symbols[i]);
            key.1.clear();
            key.1.push_str(&symbols[i + 1]);
            if let Some(&r) = ranks.get(&key) {
                if best.is_none_or(|(br, _)| r < br) {
                    best = Some((r, i));
                }
            }
        }
        let Some((rank, _)) = best else {
            return symbols;
        };
        // Merge every occurrence of that pair, left to right.
        let mut out = Vec::with_capacity(symbols.len());
        let mut i = 0;
        while i < symbols.len() {
            if i + 1 < symbols.len()
                && ranks.get(&(symbols[i].clone(), symbols[i + 1].clone())) == Some(&rank)
            {
                out.push(format!("{}{}", symbols[i], symbols[i + 1]));
                i += 2;
            } else {
                out.push(std::mem::take(&mut symbols[i]));
                i += 1;
            }
        }
        symbols = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'a' as usize], 'a');
    }

    #[test]
    fn special_layouts() {
        let en = SpecialTokens::for_vocab_size(51864).unwrap();
        assert_eq!(
            (
                en.eot,
                en.sot,
                en.no_timestamps,
                en.timestamp_begin,
                en.n_languages
            ),
            (50256, 50257, 50362, 50363, 0)
        );
        let multi = SpecialTokens::for_vocab_size(51865).unwrap();
        assert_eq!(
            (
                multi.eot,
                multi.translate,
                multi.no_speech,
                multi.timestamp_begin,
                multi.n_languages
            ),
            (50257, 50358, 50362, 50364, 99)
        );
        let v3 = SpecialTokens::for_vocab_size(51866).unwrap();
        assert_eq!(
            (v3.translate, v3.timestamp_begin, v3.n_languages),
            (50359, 50365, 100)
        );
    }
}
