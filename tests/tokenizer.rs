//! Tokenizer: openai/whisper's own tokenizer tests, encoding parity with HuggingFace `tokenizers`
//! and with tiktoken (fixture from scripts/tokenizer_reference.py), special ids, bad files.

mod common;

use std::path::{Path, PathBuf};

use gstwhispernpu::ModelError;
use gstwhispernpu::model::Tokenizer;
use gstwhispernpu::model::tokenizer::MergeSource;

fn n_vocab(name: &str) -> usize {
    if name == "tiny.en" { 51864 } else { 51865 }
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::load(&common::model_dir(name), n_vocab(name)).expect("tokenizer loads")
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A copy of the tokenizer files of `model`.
    fn with_model_files(model: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "whispernpu-tokenizer-{}-{model}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let src = common::model_dir(model);
        for f in ["vocabulary.txt", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).expect("copy model file");
        }
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// openai tests/test_tokenizer.py::test_split_on_unicode
#[test]
fn split_on_unicode() {
    let tok = load("base");
    let tokens = [8404, 871, 287, 6, 246, 526, 3210, 20378];
    let (words, word_tokens) = tok.split_tokens_on_unicode(&tokens);
    assert_eq!(
        words,
        [" elle", " est", " l", "'", "\u{fffd}", "é", "rit", "oire"]
    );
    assert_eq!(
        word_tokens,
        tokens.iter().map(|&t| vec![t]).collect::<Vec<_>>()
    );
}

/// A character cut across tokens is grouped; special and timestamp tokens are groups of their own.
#[test]
fn split_on_unicode_groups_cut_characters() {
    let tok = load("base");
    let s = &tok.specials;
    let mut tokens = vec![s.timestamp_begin];
    tokens.extend(tok.encode(" 你好，世界"));
    tokens.push(s.timestamp_begin + 50);
    tokens.push(s.eot);
    let (words, word_tokens) = tok.split_tokens_on_unicode(&tokens);
    assert_eq!(word_tokens.concat(), tokens);
    assert_eq!(words.concat(), "<|0.00|> 你好，世界<|1.00|><|endoftext|>");
    assert!(words.iter().all(|w| !w.contains('\u{fffd}')), "{words:?}");
    assert!(
        word_tokens.iter().any(|g| g.len() > 1),
        "expected a character split across tokens: {word_tokens:?}"
    );
    assert_eq!(words[0], "<|0.00|>");
    assert_eq!(words[words.len() - 1], "<|endoftext|>");
}

/// openai tests/test_tokenizer.py::test_tokenizer (round trip; multilingual is more compact).
#[test]
fn korean_round_trip() {
    let text = "다람쥐 헌 쳇바퀴에 타고파";
    let gpt2 = load("tiny.en");
    let multi = load("base");
    let gpt2_tokens = gpt2.encode(text);
    let multi_tokens = multi.encode(text);
    assert_eq!(gpt2.decode(&gpt2_tokens), text);
    assert_eq!(multi.decode(&multi_tokens), text);
    assert!(
        gpt2_tokens.len() > multi_tokens.len(),
        "{} GPT-2 tokens vs {} multilingual",
        gpt2_tokens.len(),
        multi_tokens.len()
    );
}

struct Fixture {
    texts: Vec<String>,
    json: serde_json::Value,
}

impl Fixture {
    fn load() -> Self {
        let path = common::repo().join("tests/fixtures/tokenizer_reference.json");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("fixture is JSON");
        let texts = json["texts"]
            .as_array()
            .expect("texts")
            .iter()
            .map(|t| t.as_str().expect("text").to_string())
            .collect();
        Self { texts, json }
    }

    /// Expected ids of each text by implementation ("huggingface", "tiktoken") and model.
    fn ids(&self, implementation: &str, model: &str) -> Vec<Vec<u32>> {
        let rows = self.json[implementation][model]
            .as_array()
            .unwrap_or_else(|| panic!("fixture has no {implementation}/{model}"));
        assert_eq!(rows.len(), self.texts.len());
        rows.iter()
            .map(|row| {
                row.as_array()
                    .expect("id list")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect()
            })
            .collect()
    }
}

fn check_encoding(tok: &Tokenizer, fixture: &Fixture, implementation: &str, model: &str) {
    for (text, expected) in fixture.texts.iter().zip(fixture.ids(implementation, model)) {
        assert_eq!(
            tok.encode(text),
            expected,
            "{model} vs {implementation}: {text:?}"
        );
        assert_eq!(tok.decode(&expected), *text, "{model}: decode {text:?}");
    }
}

/// With tokenizer.json: ids of HuggingFace `tokenizers` (as faster-whisper).
#[test]
fn encoding_matches_huggingface_tokenizers() {
    let fixture = Fixture::load();
    for name in ["tiny.en", "base"] {
        let tok = load(name);
        assert_eq!(tok.merge_source(), MergeSource::TokenizerJson);
        check_encoding(&tok, &fixture, "huggingface", name);
    }
}

/// Without tokenizer.json: vocabulary ranks, ids of tiktoken (as openai/whisper).
#[test]
fn encoding_without_merges_matches_tiktoken() {
    let fixture = Fixture::load();
    for name in ["tiny.en", "base"] {
        let dir = TempDir::with_model_files(name, "no-merges");
        std::fs::remove_file(dir.file("tokenizer.json")).expect("remove tokenizer.json");
        let tok = Tokenizer::load(dir.path(), n_vocab(name)).expect("loads without merges");
        assert_eq!(tok.merge_source(), MergeSource::VocabularyRanks);
        check_encoding(&tok, &fixture, "tiktoken", name);
        // The two sources differ on the multilingual vocabulary (tokenizer.json lacks " they").
        let they = tok.encode(" they");
        assert_eq!(they, [tok.single_token(" they").expect("token ` they`")]);
    }
    assert_eq!(load("base").encode(" they"), [220, 13162]);
}

#[test]
fn special_text_is_encoded_as_text() {
    for name in ["tiny.en", "base"] {
        let tok = load(name);
        let text = "<|endoftext|><|en|> <|0.00|>";
        let ids = tok.encode(text);
        assert!(ids.iter().all(|&id| id < tok.specials.eot), "{ids:?}");
        assert_eq!(tok.decode(&ids), text);
    }
}

#[test]
fn utf8_split_across_tokens_decodes_exactly() {
    let tok = load("base");
    let text = " 你好，世界。";
    let ids = tok.encode(text);
    // Some character spans two tokens: decoding token by token gives replacement characters,
    // decoding all at once the exact text.
    let piecewise: String = ids.iter().map(|&id| tok.decode(&[id])).collect();
    assert!(
        piecewise.contains('\u{fffd}'),
        "expected a split character in {ids:?}"
    );
    assert_eq!(tok.decode(&ids), text);
    // Special and timestamp tokens are dropped by decode, kept by decode_with_specials.
    let mut with_specials = vec![tok.specials.sot, tok.specials.timestamp_begin];
    with_specials.extend(&ids);
    with_specials.push(tok.specials.eot);
    assert_eq!(tok.decode(&with_specials), text);
    assert_eq!(
        tok.decode_with_specials(&with_specials),
        format!("<|startoftranscript|><|0.00|>{text}<|endoftext|>")
    );
}

/// REFERENCE.md §4, checked against the vocabulary strings.
#[test]
fn special_tokens_match_reference_and_vocabulary() {
    // eot sot translate transcribe sot_lm sot_prev nospeech notimestamps timestamp_begin
    let table = [
        (
            "tiny.en",
            [
                50256, 50257, 50357, 50358, 50359, 50360, 50361, 50362, 50363,
            ],
        ),
        (
            "base",
            [
                50257, 50258, 50358, 50359, 50360, 50361, 50362, 50363, 50364,
            ],
        ),
    ];
    for (name, ids) in table {
        let tok = load(name);
        let s = &tok.specials;
        assert_eq!(
            [
                s.eot,
                s.sot,
                s.translate,
                s.transcribe,
                s.sot_lm,
                s.sot_prev,
                s.no_speech,
                s.no_timestamps,
                s.timestamp_begin
            ],
            ids,
            "{name}"
        );
        assert_eq!(tok.len(), n_vocab(name));
        for (id, text) in [
            (s.eot, "<|endoftext|>"),
            (s.sot, "<|startoftranscript|>"),
            (s.translate, "<|translate|>"),
            (s.transcribe, "<|transcribe|>"),
            (s.sot_lm, "<|startoflm|>"),
            (s.sot_prev, "<|startofprev|>"),
            (s.no_speech, "<|nocaptions|>"),
            (s.no_timestamps, "<|notimestamps|>"),
            (s.timestamp_begin, "<|0.00|>"),
            (s.timestamp_begin + 1, "<|0.02|>"),
            (s.timestamp_begin + 1500, "<|30.00|>"),
        ] {
            assert_eq!(tok.token_str(id), Some(text), "{name}: token {id}");
            assert_eq!(tok.token_id(text), Some(id), "{name}: {text}");
        }
        assert_eq!(tok.single_token(" "), Some(220));
        assert_eq!(tok.token_id("Ġ"), Some(220));
        assert!(tok.single_token(" the").is_some());
        assert_eq!(tok.single_token(" the"), tok.token_id("Ġthe"));
        assert_eq!(tok.single_token(" definitely not one token"), None);
    }

    let base = load("base");
    assert!(base.is_multilingual());
    assert_eq!(base.language_token("en"), Some(50259));
    assert_eq!(base.language_token("en-US"), Some(50259));
    assert_eq!(base.language_token("en_GB"), Some(50259));
    assert_eq!(base.language_token("DE"), base.language_token("de"));
    assert_eq!(base.language_code(50259), Some("en"));
    assert_eq!(base.language_code(50259 + 98), Some("su"));
    assert_eq!(base.language_code(50259 + 99), None);
    assert_eq!(base.language_tokens(), 50259..50358);
    assert_eq!(base.languages().len(), 99);
    for id in base.language_tokens() {
        let code = base.language_code(id).expect("code");
        assert_eq!(base.token_str(id), Some(format!("<|{code}|>").as_str()));
        assert_eq!(base.language_token(code), Some(id));
    }
    assert_eq!(base.language_token("yue"), None, "yue is large-v3 only");
    assert_eq!(base.language_token("xx"), None);
    assert_eq!(base.language_token(""), None);

    let en = load("tiny.en");
    assert!(!en.is_multilingual());
    assert!(en.language_tokens().is_empty());
    assert_eq!(en.language_token("en"), None);
}

fn expect_corrupt(result: Result<Tokenizer, ModelError>, file: &str) -> String {
    match result {
        Err(e @ ModelError::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(message.contains(file), "{message} should name {file}");
            message
        }
        Err(e) => panic!("expected Corrupt naming {file}, got {e:?}"),
        Ok(_) => panic!("expected Corrupt naming {file}, but it loaded"),
    }
}

#[test]
fn bad_files_give_typed_errors() {
    // No vocabulary.txt: the vocabulary of tokenizer.json (a Hugging Face checkpoint's only
    // tokenizer file) gives the same tokenizer.
    let dir = TempDir::with_model_files("tiny.en", "missing");
    std::fs::remove_file(dir.file("vocabulary.txt")).unwrap();
    let from_json = Tokenizer::load(dir.path(), 51864).expect("tokenizer.json alone");
    let reference = load("tiny.en");
    assert_eq!(from_json.len(), reference.len());
    for id in (0..reference.len() as u32).step_by(97) {
        assert_eq!(
            from_json.token_str(id),
            reference.token_str(id),
            "token {id}"
        );
    }
    // No vocabulary at all.
    std::fs::remove_file(dir.file("tokenizer.json")).unwrap();
    match Tokenizer::load(dir.path(), 51864) {
        Err(ModelError::NotFound { path }) => assert_eq!(path, dir.file("vocabulary.txt")),
        Err(e) => panic!("expected NotFound, got {e:?}"),
        Ok(_) => panic!("loaded without a vocabulary"),
    }

    // Too few tokens.
    let dir = TempDir::with_model_files("tiny.en", "short");
    std::fs::write(dir.file("vocabulary.txt"), "a\nb\nc\n").unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51864), "vocabulary.txt");

    // Not UTF-8.
    let dir = TempDir::with_model_files("tiny.en", "binary");
    std::fs::write(dir.file("vocabulary.txt"), b"a\n\xff\xfe\n").unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51864), "vocabulary.txt");

    // tokenizer.json that is not JSON.
    let dir = TempDir::with_model_files("tiny.en", "json");
    std::fs::write(dir.file("tokenizer.json"), "{ not json").unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51864), "tokenizer.json");

    // tokenizer.json whose merges name unknown tokens, or no merges.
    let dir = TempDir::with_model_files("tiny.en", "merges");
    std::fs::write(
        dir.file("tokenizer.json"),
        r#"{"model": {"type": "BPE", "merges": ["Ġ t", "nosuch token"]}}"#,
    )
    .unwrap();
    let message = expect_corrupt(Tokenizer::load(dir.path(), 51864), "tokenizer.json");
    assert!(message.contains("nosuch"), "{message}");
    std::fs::write(dir.file("tokenizer.json"), r#"{"model": {}}"#).unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51864), "tokenizer.json");

    // The vocabulary of another model (English-only vocabulary, multilingual layout).
    let dir = TempDir::with_model_files("tiny.en", "other-model");
    std::fs::remove_file(dir.file("tokenizer.json")).unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51865), "vocabulary.txt");

    // A vocabulary size no Whisper model has.
    let dir = TempDir::with_model_files("tiny.en", "size");
    assert!(matches!(
        Tokenizer::load(dir.path(), 1234),
        Err(ModelError::Unsupported { .. })
    ));

    // vocabulary.json that is not an array of strings.
    let dir = TempDir::with_model_files("tiny.en", "vocab-json");
    std::fs::remove_file(dir.file("vocabulary.txt")).unwrap();
    std::fs::write(dir.file("vocabulary.json"), "[1, 2, 3]").unwrap();
    expect_corrupt(Tokenizer::load(dir.path(), 51864), "vocabulary.json");
}

/// vocabulary.json instead of .txt, CRLF line ends, and missing timestamp tokens give the same
/// tokenizer.
#[test]
fn other_vocabulary_forms_load_alike() {
    let reference = load("base");
    let text = " Le garçon a mangé l'éléphant, 你好 they're";
    let ids = reference.encode(text);
    let stamps = [reference.specials.timestamp_begin + 1500];
    let lines: Vec<String> =
        std::fs::read_to_string(common::model_dir("base").join("vocabulary.txt"))
            .unwrap()
            .strip_suffix('\n')
            .unwrap()
            .split('\n')
            .map(str::to_string)
            .collect();
    assert_eq!(
        lines[50256], "",
        "the multilingual vocabulary has an empty token"
    );

    let json = TempDir::with_model_files("base", "vocab-json");
    std::fs::remove_file(json.file("vocabulary.txt")).unwrap();
    std::fs::write(
        json.file("vocabulary.json"),
        serde_json::to_vec(&lines).unwrap(),
    )
    .unwrap();

    let crlf = TempDir::with_model_files("base", "crlf");
    std::fs::write(crlf.file("vocabulary.txt"), lines.join("\r\n") + "\r\n").unwrap();

    // Only up to <|0.00|>: the other timestamps are named by the layout.
    let short = TempDir::with_model_files("base", "no-stamps");
    let n = reference.specials.timestamp_begin as usize + 1;
    std::fs::write(short.file("vocabulary.txt"), lines[..n].join("\n")).unwrap();

    for dir in [&json, &crlf, &short] {
        let tok = Tokenizer::load(dir.path(), 51865).expect("loads");
        assert_eq!(tok.len(), 51865);
        assert_eq!(tok.encode(text), ids, "{}", dir.path().display());
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(tok.token_str(50256), Some(""));
        assert_eq!(tok.decode_with_specials(&stamps), "<|30.00|>");
        for id in (0..51865).step_by(97) {
            assert_eq!(tok.token_str(id), reference.token_str(id));
            assert_eq!(tok.token_bytes(id), reference.token_bytes(id));
        }
    }
}

/// Decoding never fails, whatever the ids; encoding handles any text.
#[test]
fn arbitrary_input_is_handled() {
    let tok = load("base");
    assert_eq!(tok.decode(&[u32::MAX, 51865, 100_000]), "");
    assert_eq!(tok.decode(&[]), "");
    assert_eq!(tok.encode(""), Vec::<u32>::new());
    let long: String = "你好世界，".repeat(2000) + &" ".repeat(5000) + "x";
    let ids = tok.encode(&long);
    assert_eq!(tok.decode(&ids), long);
    let controls: String = (0u8..128).map(char::from).collect();
    assert_eq!(tok.decode(&tok.encode(&controls)), controls);
}
