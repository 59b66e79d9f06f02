//! Whisper's byte-level BPE tokenizer: exact decoding (a UTF-8 character may be split across
//! tokens, so text is assembled from bytes) and encoding for prompts (GPT-2 pre-tokenisation and
//! BPE merges).
//!
//! Encoding needs merge priorities. With `tokenizer.json` they are its `model.merges`, and the ids
//! equal HuggingFace `tokenizers` (what faster-whisper feeds the model). Without it they come from
//! the vocabulary order, a pair merging when its concatenation is a token, lower ids first: that is
//! openai/whisper's own tiktoken encoding. The two agree on the GPT-2 vocabulary; on the
//! multilingual one the `tokenizer.json` merges lack a few merges (`" they"` is then `" "` +
//! `"they"`), so the ids can differ while the text is the same.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

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

/// Timestamp tokens follow `timestamp_begin`: 0.00 s to 30.00 s, 0.02 s apart.
const N_TIMESTAMPS: u32 = 1501;

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

/// openai/whisper's `LANGUAGES` codes in token order: the first 99 are the multilingual models'
/// language tokens, large-v3 adds `yue`.
pub const LANGUAGE_CODES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su", "yue",
];

/// Where the BPE merge priorities used by [`Tokenizer::encode`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeSource {
    /// `model.merges` of `tokenizer.json`: ids as HuggingFace `tokenizers` (and faster-whisper).
    TokenizerJson,
    /// The vocabulary order (a token's id is its rank): ids as openai/whisper's tiktoken.
    VocabularyRanks,
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

/// Adjacent token pair → the merge that joins it.
type MergeTable = HashMap<(u32, u32), Merge>;

/// One BPE merge: its priority (lower first) and the token it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Merge {
    rank: u32,
    merged: u32,
}

pub struct Tokenizer {
    pub specials: SpecialTokens,
    /// Token strings as in the vocabulary file (byte-level form).
    strings: Vec<String>,
    /// Raw bytes of all tokens, concatenated: token `i` is `token_bytes[offsets[i]..offsets[i + 1]]`.
    token_bytes: Vec<u8>,
    offsets: Vec<usize>,
    /// Vocabulary string → id (the first id when a string repeats).
    ids: HashMap<String, u32>,
    /// The text token of each single byte.
    byte_tokens: [u32; 256],
    merges: MergeTable,
    merge_source: MergeSource,
    /// A pre-token that is itself a text token is emitted whole, before any merge (tiktoken does
    /// this; HuggingFace only with `ignore_merges`).
    whole_piece_first: bool,
    byte_chars: [char; 256],
    pretokenize: Regex,
    /// Language codes, in token order from `specials.language_begin`.
    languages: &'static [&'static str],
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_tokens", &self.strings.len())
            .field("specials", &self.specials)
            .field("merge_source", &self.merge_source)
            .field("n_merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

fn corrupt(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Corrupt {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The file's bytes, `None` when it does not exist.
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

/// Token strings of `vocabulary.txt` (one per line) or else `vocabulary.json` (an array), and the
/// path they came from.
fn read_vocabulary(dir: &Path) -> Result<(Vec<String>, PathBuf), ModelError> {
    let txt = dir.join("vocabulary.txt");
    if let Some(bytes) = read(&txt)? {
        let text = String::from_utf8(bytes).map_err(|e| {
            corrupt(
                &txt,
                format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
            )
        })?;
        // Line i is token i; a line may be empty (the multilingual vocabulary has an empty token),
        // so only the final newline is dropped. Byte-level tokens never contain '\r' (byte 13 is
        // written as 'č'), so a trailing one is a CRLF line end.
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let strings = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
            .collect();
        return Ok((strings, txt));
    }
    let json = dir.join("vocabulary.json");
    if let Some(bytes) = read(&json)? {
        let strings = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&json, format!("not a JSON array of token strings ({e})")))?;
        return Ok((strings, json));
    }
    Err(ModelError::NotFound { path: txt })
}

/// Checks that the special tokens sit where the layout of `n_vocab` puts them.
fn check_specials(
    strings: &[String],
    specials: &SpecialTokens,
    path: &Path,
) -> Result<(), ModelError> {
    let expected: [(u32, &[&str]); 8] = [
        (specials.eot, &["<|endoftext|>"]),
        (specials.sot, &["<|startoftranscript|>"]),
        (specials.translate, &["<|translate|>"]),
        (specials.transcribe, &["<|transcribe|>"]),
        (specials.sot_lm, &["<|startoflm|>"]),
        (specials.sot_prev, &["<|startofprev|>"]),
        // Older vocabularies call it <|nocaptions|>.
        (specials.no_speech, &["<|nospeech|>", "<|nocaptions|>"]),
        (specials.no_timestamps, &["<|notimestamps|>"]),
    ];
    for (id, names) in expected {
        let found = strings.get(id as usize).map(String::as_str).unwrap_or("");
        if !names.contains(&found) {
            return Err(corrupt(
                path,
                format!(
                    "token {id} is `{found}`, expected {} (is this the vocabulary of another model?)",
                    names.join(" or ")
                ),
            ));
        }
    }
    for (i, code) in (0..specials.n_languages).zip(LANGUAGE_CODES) {
        let id = specials.language_begin + i;
        let found = strings.get(id as usize).map(String::as_str).unwrap_or("");
        if found != format!("<|{code}|>") {
            return Err(corrupt(
                path,
                format!("token {id} is `{found}`, expected the language token <|{code}|>"),
            ));
        }
    }
    Ok(())
}

/// Merges of `tokenizer.json` (`model.merges`, as "a b" strings or [a, b] pairs), mapped to ids of
/// the vocabulary; and whether its `model.ignore_merges` is set.
fn read_json_merges(
    path: &Path,
    bytes: &[u8],
    strings: &[String],
    ids: &HashMap<String, u32>,
) -> Result<(MergeTable, bool), ModelError> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(path, format!("invalid JSON: {e}")))?;
    let model = json
        .get("model")
        .ok_or_else(|| corrupt(path, "no `model` object"))?;
    if let Some(kind) = model.get("type").and_then(|t| t.as_str())
        && kind != "BPE"
    {
        return Err(corrupt(path, format!("model type `{kind}`, expected BPE")));
    }
    // The ids must mean the same tokens as the vocabulary file.
    if let Some(vocab) = model.get("vocab").and_then(|v| v.as_object()) {
        for (s, id) in vocab {
            let same = id
                .as_u64()
                .and_then(|id| strings.get(id as usize))
                .is_some_and(|v| v == s);
            if !same {
                return Err(corrupt(
                    path,
                    format!("model.vocab gives `{s}` id {id}, which disagrees with the vocabulary"),
                ));
            }
        }
    }
    let list = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| corrupt(path, "no model.merges list"))?;
    let lookup = |rank: usize, s: &str| {
        ids.get(s).copied().ok_or_else(|| {
            corrupt(
                path,
                format!("merge #{rank}: `{s}` is not in the vocabulary"),
            )
        })
    };
    let mut merges = HashMap::with_capacity_and_hasher(list.len(), Default::default());
    for (rank, m) in list.iter().enumerate() {
        let (a, b) = match m {
            serde_json::Value::String(s) => s.split_once(' ').filter(|(_, b)| !b.contains(' ')),
            serde_json::Value::Array(pair) if pair.len() == 2 => {
                pair[0].as_str().zip(pair[1].as_str())
            }
            _ => None,
        }
        .ok_or_else(|| corrupt(path, format!("merge #{rank} is not a pair of tokens: {m}")))?;
        let merge = Merge {
            rank: u32::try_from(rank).map_err(|_| corrupt(path, "too many merges"))?,
            merged: lookup(rank, &format!("{a}{b}"))?,
        };
        // A repeated pair keeps its last rank, as in HuggingFace `tokenizers`.
        merges.insert((lookup(rank, a)?, lookup(rank, b)?), merge);
    }
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    Ok((merges, ignore_merges))
}

/// tiktoken's merges: any two text tokens whose bytes concatenate to a text token join, with
/// that token's id as rank.
fn vocabulary_merges(token_bytes: &[u8], offsets: &[usize], n_text: u32) -> MergeTable {
    let bytes_of = |id: u32| &token_bytes[offsets[id as usize]..offsets[id as usize + 1]];
    let mut by_bytes: HashMap<&[u8], u32> =
        HashMap::with_capacity_and_hasher(n_text as usize, Default::default());
    for id in 0..n_text {
        if !bytes_of(id).is_empty() {
            by_bytes.entry(bytes_of(id)).or_insert(id);
        }
    }
    let mut merges = HashMap::default();
    for (&bytes, &merged) in &by_bytes {
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            if let (Some(&a), Some(&b)) = (by_bytes.get(a), by_bytes.get(b)) {
                merges.insert(
                    (a, b),
                    Merge {
                        rank: merged,
                        merged,
                    },
                );
            }
        }
    }
    merges
}

/// The special-token layout of a model with `n_vocab` tokens; `path` names the model file.
fn layout(path: &Path, n_vocab: usize) -> Result<SpecialTokens, ModelError> {
    SpecialTokens::for_vocab_size(n_vocab).ok_or_else(|| ModelError::Unsupported {
        path: path.to_path_buf(),
        what: format!("vocabulary size {n_vocab} (expected 51864, 51865 or 51866)"),
    })
}

/// Names of the special tokens from `eot` up to the first timestamp, in id order, as openai's
/// tokenizer names them (`<|endoftext|>`, `<|startoftranscript|>`, the language tokens,
/// `<|translate|>` ... `<|notimestamps|>`); `None` for an unknown vocabulary size.
pub fn special_token_names(n_vocab: usize) -> Option<Vec<String>> {
    let specials = SpecialTokens::for_vocab_size(n_vocab)?;
    let mut names = vec![
        "<|endoftext|>".to_string(),
        "<|startoftranscript|>".to_string(),
    ];
    // English-only vocabularies keep the 99 language tokens too, unused.
    let n_languages = (specials.translate - specials.sot - 1) as usize;
    names.extend(
        LANGUAGE_CODES[..n_languages]
            .iter()
            .map(|c| format!("<|{c}|>")),
    );
    for name in [
        "translate",
        "transcribe",
        "startoflm",
        "startofprev",
        "nospeech",
        "notimestamps",
    ] {
        names.push(format!("<|{name}|>"));
    }
    Some(names)
}

/// Token strings of a Hugging Face `tokenizer.json`: `model.vocab` and `added_tokens`, by id.
fn json_vocabulary(path: &Path) -> Result<Vec<String>, ModelError> {
    let bytes = read(path)?.ok_or_else(|| ModelError::NotFound {
        path: path.to_path_buf(),
    })?;
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(path, format!("invalid JSON: {e}")))?;
    let mut by_id: Vec<Option<String>> = Vec::new();
    let mut put = |id: Option<u64>, s: &str| -> Result<(), ModelError> {
        let id = id
            .filter(|&id| id < 1 << 20)
            .ok_or_else(|| corrupt(path, format!("token `{s}` has no valid id")))?
            as usize;
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some(s.to_string());
        Ok(())
    };
    let vocab = json
        .pointer("/model/vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| corrupt(path, "no model.vocab object"))?;
    for (s, id) in vocab {
        put(id.as_u64(), s)?;
    }
    for added in json
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        let content = added.get("content").and_then(|c| c.as_str()).unwrap_or("");
        put(added.get("id").and_then(|i| i.as_u64()), content)?;
    }
    by_id
        .into_iter()
        .enumerate()
        .map(|(id, s)| s.ok_or_else(|| corrupt(path, format!("no token has id {id}"))))
        .collect()
}

impl Tokenizer {
    /// Reads `vocabulary.txt` (or `vocabulary.json`) and, when present, the BPE merges of
    /// `tokenizer.json` from a model directory. `n_vocab` is the model's vocabulary size.
    ///
    /// Timestamp tokens missing at the end of the vocabulary are named as openai names them
    /// (`<|1.00|>`); every other special token must be in place.
    pub fn load(dir: &Path, n_vocab: usize) -> Result<Self, ModelError> {
        let tokenizer_json = dir.join("tokenizer.json");
        let (strings, vocab_path) = match read_vocabulary(dir) {
            Ok(found) => found,
            // A Hugging Face checkpoint has only tokenizer.json: its vocabulary and added tokens.
            Err(ModelError::NotFound { .. }) if tokenizer_json.is_file() => {
                (json_vocabulary(&tokenizer_json)?, tokenizer_json.clone())
            }
            Err(e) => return Err(e),
        };
        Self::build(
            strings,
            &vocab_path,
            n_vocab,
            Some(&tokenizer_json),
            &dir.join("model.bin"),
        )
    }

    /// A tokenizer from raw token bytes, as a whisper.cpp GGML file embeds them (text tokens
    /// only, in id order); the special tokens are named from the layout of `n_vocab`, and the
    /// merges come from the vocabulary order (tiktoken's encoding, where these files come from).
    /// `path` is the file the vocabulary came from, for errors.
    pub fn from_token_bytes(
        path: &Path,
        tokens: &[Vec<u8>],
        n_vocab: usize,
    ) -> Result<Self, ModelError> {
        let specials = layout(path, n_vocab)?;
        if tokens.len() < specials.eot as usize {
            return Err(corrupt(
                path,
                format!(
                    "vocabulary has {} text tokens, a model with {n_vocab} needs {}",
                    tokens.len(),
                    specials.eot
                ),
            ));
        }
        let byte_chars = bytes_to_unicode();
        let mut strings: Vec<String> = tokens[..specials.eot as usize]
            .iter()
            .map(|t| t.iter().map(|&b| byte_chars[b as usize]).collect())
            .collect();
        strings.extend(special_token_names(n_vocab).unwrap_or_default());
        Self::build(strings, path, n_vocab, None, path)
    }

    fn build(
        mut strings: Vec<String>,
        vocab_path: &Path,
        n_vocab: usize,
        tokenizer_json: Option<&Path>,
        model_path: &Path,
    ) -> Result<Self, ModelError> {
        let specials = layout(model_path, n_vocab)?;
        // Timestamp tokens may be missing (named below); every other special must be there.
        if strings.len() < specials.timestamp_begin as usize || strings.len() > n_vocab {
            return Err(corrupt(
                vocab_path,
                format!(
                    "{} tokens, but a model with {n_vocab} needs {} to {n_vocab}",
                    strings.len(),
                    specials.timestamp_begin
                ),
            ));
        }
        check_specials(&strings, &specials, vocab_path)?;
        let first_missing = strings.len() as u32 - specials.timestamp_begin;
        strings.extend(
            (first_missing..N_TIMESTAMPS).map(|i| format!("<|{:.2}|>", f64::from(i) * 0.02)),
        );

        let byte_chars = bytes_to_unicode();
        // The byte-level characters are all below U+0144: a table, not a map.
        let mut char_bytes = [None::<u8>; 512];
        for (b, &c) in byte_chars.iter().enumerate() {
            char_bytes[c as usize] = Some(b as u8);
        }
        let mut token_bytes = Vec::with_capacity(strings.iter().map(String::len).sum());
        let mut offsets = Vec::with_capacity(strings.len() + 1);
        offsets.push(0);
        for s in &strings {
            for c in s.chars() {
                match char_bytes.get(c as usize).copied().flatten() {
                    Some(b) => token_bytes.push(b),
                    // Not byte-level text (never in Whisper's vocabularies): keep it as written.
                    None => token_bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            offsets.push(token_bytes.len());
        }
        let mut ids = HashMap::with_capacity_and_hasher(strings.len(), Default::default());
        for (i, s) in strings.iter().enumerate() {
            ids.entry(s.clone()).or_insert(i as u32);
        }
        let mut byte_tokens = [0u32; 256];
        for (b, token) in byte_tokens.iter_mut().enumerate() {
            *token = ids
                .get(byte_chars[b].encode_utf8(&mut [0; 4]) as &str)
                .copied()
                .filter(|&id| id < specials.eot)
                .ok_or_else(|| corrupt(vocab_path, format!("no token for byte {b:#04x}")))?;
        }

        let json = match tokenizer_json {
            Some(path) => read(path)?.map(|bytes| (path, bytes)),
            None => None,
        };
        let (merges, merge_source, whole_piece_first) = match json {
            Some((path, bytes)) => {
                let (merges, ignore_merges) = read_json_merges(path, &bytes, &strings, &ids)?;
                (merges, MergeSource::TokenizerJson, ignore_merges)
            }
            None => (
                vocabulary_merges(&token_bytes, &offsets, specials.eot),
                MergeSource::VocabularyRanks,
                true,
            ),
        };

        let pretokenize = Regex::new(PRETOKENIZE).map_err(|e| ModelError::Unsupported {
            path: vocab_path.to_path_buf(),
            what: format!("pre-tokenizer pattern ({e})"),
        })?;
        let languages = &LANGUAGE_CODES[..specials.n_languages as usize];
        Ok(Self {
            specials,
            strings,
            token_bytes,
            offsets,
            ids,
            byte_tokens,
            merges,
            merge_source,
            whole_piece_first,
            byte_chars,
            pretokenize,
            languages,
        })
    }

    /// openai's `non_speech_tokens`: symbols and music notes that are never speech, suppressed
    /// with `suppress_tokens=[-1]` (what `suppress_ids` of a CTranslate2 config.json and
    /// `suppress_tokens` of a Hugging Face one list), for checkpoints that do not list them.
    pub fn non_speech_tokens(&self) -> Vec<u32> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        let notes = ["♩", "♪", "♫", "♬", "♭", "♮", "♯"];
        let mut result: Vec<u32> = [" -", " '"]
            .iter()
            .filter_map(|s| self.encode(s).first().copied())
            .collect();
        for (symbol, is_note) in symbols
            .iter()
            .map(|s| (s.as_str(), false))
            .chain(notes.iter().map(|&s| (s, true)))
        {
            for text in [symbol.to_string(), format!(" {symbol}")] {
                let tokens = self.encode(&text);
                if tokens.len() == 1 || (is_note && !tokens.is_empty()) {
                    result.push(tokens[0]);
                }
            }
        }
        result.sort_unstable();
        result.dedup();
        result
    }

    pub fn is_multilingual(&self) -> bool {
        self.specials.n_languages > 0
    }

    /// Number of tokens (the model's vocabulary size).
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Where the merges used by [`Tokenizer::encode`] come from.
    pub fn merge_source(&self) -> MergeSource {
        self.merge_source
    }

    /// Raw bytes of a token (special tokens: their name), empty for an unknown id.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => &self.token_bytes[start..end],
            _ => &[],
        }
    }

    fn decode_filtered(&self, ids: &[u32], keep: impl Fn(u32) -> bool) -> String {
        let mut buf = Vec::new();
        for &id in ids.iter().filter(|&&id| keep(id)) {
            buf.extend_from_slice(self.token_bytes(id));
        }
        // Replaces each maximal invalid subpart with one U+FFFD, as Python's
        // `bytes.decode("utf-8", errors="replace")` does.
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Text of text tokens (ids < eot); special and timestamp tokens are skipped. Invalid UTF-8
    /// becomes U+FFFD as with Python's `errors="replace"`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let eot = self.specials.eot;
        self.decode_filtered(ids, |id| id < eot)
    }

    /// Text of all tokens, special and timestamp tokens written as in the vocabulary.
    pub fn decode_with_specials(&self, ids: &[u32]) -> String {
        self.decode_filtered(ids, |_| true)
    }

    /// Encodes text (GPT-2 pre-tokenisation + byte-level BPE) to text-token ids. Text that looks
    /// like a special token (`<|endoftext|>`) is encoded as plain text, never as the special token.
    /// See the module documentation for where the merges come from.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            // The pattern matches any character, so a match always starts at `pos`; should the
            // matcher give up (backtracking limit), the rest is one piece rather than lost.
            let (start, end) = match self.pretokenize.find_from_pos(text, pos) {
                Ok(Some(m)) if m.end() > pos => (m.start(), m.end()),
                _ => (pos, text.len()),
            };
            if start > pos {
                self.encode_piece(&text.as_bytes()[pos..start], &mut out);
            }
            self.encode_piece(&text.as_bytes()[start..end], &mut out);
            pos = end;
        }
        out
    }

    /// Appends the tokens of one pre-token.
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let [b] = piece {
            out.push(self.byte_tokens[*b as usize]);
            return;
        }
        if self.whole_piece_first {
            let s: String = piece.iter().map(|&b| self.byte_chars[b as usize]).collect();
            if let Some(&id) = self.ids.get(&s)
                && id < self.specials.eot
            {
                out.push(id);
                return;
            }
        }
        self.bpe(piece, out);
    }

    /// Byte-level BPE of one pre-token: repeatedly joins the adjacent pair with the lowest merge
    /// rank, the leftmost on ties (as both tiktoken and HuggingFace do), in O(n log n).
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        let n = piece.len();
        let mut ids: Vec<u32> = piece
            .iter()
            .map(|&b| self.byte_tokens[b as usize])
            .collect();
        // Doubly linked list over the symbols; a merged symbol keeps the left one's slot, so
        // slot order is text order. `n` / `usize::MAX` mark the ends.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut queue = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<_>, left: usize, pair: (u32, u32)| {
            if let Some(m) = self.merges.get(&pair) {
                queue.push(Reverse((m.rank, left, m.merged)));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut queue, i, (ids[i], ids[i + 1]));
        }
        while let Some(Reverse((rank, left, merged))) = queue.pop() {
            let right = next[left];
            if !alive[left] || right >= n {
                continue;
            }
            // Skip entries made stale by an earlier merge of either symbol.
            let current = self.merges.get(&(ids[left], ids[right]));
            if current != Some(&Merge { rank, merged }) {
                continue;
            }
            ids[left] = merged;
            alive[right] = false;
            let after = next[right];
            next[left] = after;
            if after < n {
                prev[after] = left;
                push(&mut queue, left, (merged, ids[after]));
            }
            let before = prev[left];
            if before < n {
                push(&mut queue, before, (ids[before], merged));
            }
        }
        let mut i = 0;
        while i < n {
            out.push(ids[i]);
            i = next[i];
        }
    }

    /// openai `split_tokens_on_unicode`: groups tokens so each group decodes to whole
    /// characters; returns the groups' texts and tokens.
    ///
    /// A group is closed when its text has no U+FFFD, or when its first U+FFFD is also in the
    /// text of all tokens at that position (a genuinely invalid sequence, not a character cut in
    /// two). As in openai, trailing tokens that never form such a group are left out.
    pub fn split_tokens_on_unicode(&self, ids: &[u32]) -> (Vec<String>, Vec<Vec<u32>>) {
        const REPLACEMENT: char = '\u{fffd}';
        let full: Vec<char> = self.decode_with_specials(ids).chars().collect();
        let mut words = Vec::new();
        let mut word_tokens = Vec::new();
        let mut current: Vec<u32> = Vec::new();
        // Offset of the current group in `full`, in characters (Python string indices).
        let mut offset = 0;
        for &id in ids {
            current.push(id);
            let decoded = self.decode_with_specials(&current);
            let complete = match decoded.chars().position(|c| c == REPLACEMENT) {
                None => true,
                Some(at) => full.get(offset + at) == Some(&REPLACEMENT),
            };
            if complete {
                offset += decoded.chars().count();
                words.push(decoded);
                word_tokens.push(std::mem::take(&mut current));
            }
        }
        (words, word_tokens)
    }

    /// openai `split_tokens_on_spaces`: groups of [`split_tokens_on_unicode`] joined into words;
    /// a word starts at a group that begins with a space, is special (≥ EOT) or is punctuation.
    ///
    /// [`split_tokens_on_unicode`]: Self::split_tokens_on_unicode
    pub fn split_tokens_on_spaces(&self, ids: &[u32]) -> (Vec<String>, Vec<Vec<u32>>) {
        // Python's `string.punctuation`; openai tests `subword.strip() in string.punctuation`,
        // a substring test (so an empty or all-space group counts as punctuation too).
        const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
        let (subwords, groups) = self.split_tokens_on_unicode(ids);
        let mut words: Vec<String> = Vec::new();
        let mut word_tokens: Vec<Vec<u32>> = Vec::new();
        for (subword, tokens) in subwords.into_iter().zip(groups) {
            let special = tokens[0] >= self.specials.eot;
            let with_space = subword.starts_with(' ');
            let punctuation = PUNCTUATION.contains(subword.trim());
            match (words.last_mut(), word_tokens.last_mut()) {
                (Some(word), Some(last)) if !(special || with_space || punctuation) => {
                    word.push_str(&subword);
                    last.extend(tokens);
                }
                _ => {
                    words.push(subword);
                    word_tokens.push(tokens);
                }
            }
        }
        (words, word_tokens)
    }

    /// openai `split_to_word_tokens`: words of `ids` for word timestamps; languages written
    /// without spaces (Chinese, Japanese, Thai, Lao, Burmese, Cantonese) split per character
    /// group instead.
    pub fn split_to_word_tokens(
        &self,
        ids: &[u32],
        language: Option<&str>,
    ) -> (Vec<String>, Vec<Vec<u32>>) {
        match language {
            Some("zh" | "ja" | "th" | "lo" | "my" | "yue") => self.split_tokens_on_unicode(ids),
            _ => self.split_tokens_on_spaces(ids),
        }
    }

    /// Language codes of this vocabulary's language tokens, in token order (empty for
    /// English-only models).
    pub fn languages(&self) -> &[&'static str] {
        self.languages
    }

    /// Language token of a code ("en"; "en-US", "en_GB" and "EN" are accepted as "en").
    pub fn language_token(&self, code: &str) -> Option<u32> {
        let base = code.split(['-', '_']).next()?.trim().to_ascii_lowercase();
        self.languages
            .iter()
            .position(|&l| l == base)
            .map(|i| self.specials.language_begin + i as u32)
    }

    /// Language code of a language token.
    pub fn language_code(&self, token: u32) -> Option<&str> {
        let i = token.checked_sub(self.specials.language_begin)? as usize;
        self.languages.get(i).copied()
    }

    /// Ids of all language tokens of this vocabulary (empty for English-only models).
    pub fn language_tokens(&self) -> Range<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'\r' as usize], 'č');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0xad], 'Ń');
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
        assert_eq!(en.timestamp_begin + N_TIMESTAMPS, 51864);
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
        assert_eq!(multi.timestamp_begin + N_TIMESTAMPS, 51865);
        let v3 = SpecialTokens::for_vocab_size(51866).unwrap();
        assert_eq!(
            (v3.translate, v3.timestamp_begin, v3.n_languages),
            (50359, 50365, 100)
        );
        assert_eq!(v3.timestamp_begin + N_TIMESTAMPS, 51866);
        assert_eq!(LANGUAGE_CODES[98], "su");
        assert_eq!(LANGUAGE_CODES[99], "yue");
    }

    /// `String::from_utf8_lossy` against CPython 3.11 `bytes.decode("utf-8", errors="replace")`
    /// (expected strings printed by Python; the two also agreed on 200 000 random byte strings
    /// built from boundary bytes).
    #[test]
    fn lossy_decoding_matches_python() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xe4\xbd", "\u{fffd}"),
            (b"\xe4\xbd\xa0", "你"),
            (b"a\xe4\xbdb", "a\u{fffd}b"),
            (b"\xf0\x80\x80", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xed\xa0\x80", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xf0\x9f\x98", "\u{fffd}"),
            (b"\xf0\x9f\x98\x80\x80", "😀\u{fffd}"),
            (b"\xc0\xaf", "\u{fffd}\u{fffd}"),
            (b"\xf5\x80", "\u{fffd}\u{fffd}"),
            (b"\xe0\x80\xaf", "\u{fffd}\u{fffd}\u{fffd}"),
            (b"\xbf\xbf", "\u{fffd}\u{fffd}"),
        ];
        for (bytes, python) in cases {
            assert_eq!(String::from_utf8_lossy(bytes), *python, "{bytes:x?}");
        }
    }
}
