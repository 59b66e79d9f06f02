//! Tokenizer: openai/whisper's own tokenizer tests, encoding parity with HuggingFace
//! `tokenizers` (fixture from scripts/tokenizer_reference.py), special ids, bad files.

mod common;

use gstwhispernpu::ModelError;
use gstwhispernpu::model::Tokenizer;

fn load(name: &str) -> Tokenizer {
    let n_vocab = if name == "tiny.en" { 51864 } else { 51865 };
    Tokenizer::load(&common::model_dir(name), n_vocab).expect("tokenizer loads")
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
    assert!(gpt2_tokens.len() > multi_tokens.len());
}

#[test]
fn encoding_matches_huggingface_tokenizers() {
    let path = common::repo().join("tests/fixtures/tokenizer_reference.json");
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).unwrap();
    let texts: Vec<&str> = fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for name in ["tiny.en", "base"] {
        let tok = load(name);
        for (text, ids) in texts
            .iter()
            .zip(fixture["models"][name].as_array().unwrap())
        {
            let expected: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text), expected, "{name}: {text:?}");
            assert_eq!(tok.decode(&expected), *text, "{name}: decode {text:?}");
        }
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
}

#[test]
fn special_tokens_match_vocabulary() {
    for (name, eot, first_ts) in [("tiny.en", 50256, 50363), ("base", 50257, 50364)] {
        let tok = load(name);
        let s = &tok.specials;
        assert_eq!((s.eot, s.timestamp_begin), (eot, first_ts));
        for (id, text) in [
            (s.eot, "<|endoftext|>"),
            (s.sot, "<|startoftranscript|>"),
            (s.translate, "<|translate|>"),
            (s.transcribe, "<|transcribe|>"),
            (s.sot_prev, "<|startofprev|>"),
            (s.no_timestamps, "<|notimestamps|>"),
            (s.timestamp_begin, "<|0.00|>"),
        ] {
            assert_eq!(tok.token_str(id), Some(text), "{name}: token {id}");
        }
        assert_eq!(tok.single_token(" "), Some(220));
    }
    let base = load("base");
    assert_eq!(base.language_token("en"), Some(50259));
    assert_eq!(base.language_token("en-US"), Some(50259));
    assert_eq!(base.language_token("DE"), base.language_token("de"));
    assert_eq!(base.language_code(50259), Some("en"));
    assert_eq!(base.language_tokens().len(), 99);
    assert_eq!(base.language_token("xx"), None);
    assert!(load("tiny.en").language_tokens().is_empty());
}

fn temp_copy(tag: &str) -> std::path::PathBuf {
    let src = common::model_dir("tiny.en");
    let dir = std::env::temp_dir().join(format!("whispernpu-tok-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["vocabulary.txt", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

#[test]
fn bad_files_give_typed_errors() {
    let dir = temp_copy("missing");
    std::fs::remove_file(dir.join("vocabulary.txt")).unwrap();
    match Tokenizer::load(&dir, 51864) {
        Err(ModelError::NotFound { path }) => assert_eq!(path, dir.join("vocabulary.txt")),
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("loaded without a vocabulary"),
    }

    let dir = temp_copy("short");
    std::fs::write(dir.join("vocabulary.txt"), "a\nb\nc\n").unwrap();
    match Tokenizer::load(&dir, 51864) {
        Err(e @ ModelError::Corrupt { .. }) => {
            assert!(e.to_string().contains("vocabulary.txt"), "{e}")
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("loaded a 3-token vocabulary"),
    }

    let dir = temp_copy("json");
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    match Tokenizer::load(&dir, 51864) {
        Err(e @ ModelError::Corrupt { .. }) => {
            assert!(e.to_string().contains("tokenizer.json"), "{e}")
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("loaded a corrupt tokenizer.json"),
    }

    let dir = temp_copy("size");
    assert!(matches!(
        Tokenizer::load(&dir, 1234),
        Err(ModelError::Unsupported { .. })
    ));
}
