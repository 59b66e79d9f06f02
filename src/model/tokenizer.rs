//! Whisper's byte-level BPE tokenizer: exact decoding (UTF-8 split across tokens) and encoding
//! for prompts. (Interface fixed; implementation in progress.)

use std::path::Path;

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

pub struct Tokenizer {
    pub specials: SpecialTokens,
}

impl Tokenizer {
    /// Reads `vocabulary.txt` (or `vocabulary.json`) and `tokenizer.json` (BPE merges) from a
    /// model directory. `n_vocab` is the model's vocabulary size (embedding rows).
    pub fn load(_dir: &Path, _n_vocab: usize) -> Result<Self, ModelError> {
        todo!()
    }
    pub fn is_multilingual(&self) -> bool {
        todo!()
    }
    /// Text of text tokens (ids < eot); special and timestamp tokens are skipped. Invalid UTF-8
    /// becomes U+FFFD as in Python's `errors="replace"`.
    pub fn decode(&self, _ids: &[u32]) -> String {
        todo!()
    }
    /// Encodes text (GPT-2 pre-tokenisation + BPE merges) to ids; no special tokens.
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        todo!()
    }
    /// openai `split_tokens_on_unicode`: words at valid UTF-8 boundaries and their tokens.
    pub fn split_tokens_on_unicode(&self, _ids: &[u32]) -> (Vec<String>, Vec<Vec<u32>>) {
        todo!()
    }
    /// Language token of a code ("en"; "en-US" is accepted as "en"), if the vocabulary has it.
    pub fn language_token(&self, _code: &str) -> Option<u32> {
        todo!()
    }
    /// Language code of a language token.
    pub fn language_code(&self, _token: u32) -> Option<&'static str> {
        todo!()
    }
    /// Ids of all language tokens of this vocabulary.
    pub fn language_tokens(&self) -> std::ops::Range<u32> {
        todo!()
    }
    /// Token ids that encode `text` as a single token, if any (e.g. " " for suppress-blank).
    pub fn single_token(&self, _text: &str) -> Option<u32> {
        todo!()
    }
    /// openai's non-speech symbols suppression list is in config.json; this gives the id of a
    /// token string as it appears in the vocabulary file (`Ġ` for space), if present.
    pub fn token_id(&self, _token: &str) -> Option<u32> {
        todo!()
    }
}
