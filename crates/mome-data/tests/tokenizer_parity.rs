//! Rust vs Python `tokenizers` parity on the seed tokenizer, and tokenizer training.

use std::fs;
use std::path::{Path, PathBuf};

use mome_data::tokenizer::{
    load_tokenizer, train_tokenizer, train_tokenizer_from_dir, TokenizerTrainConfig,
};
use mome_data::Error;

fn seed_path() -> PathBuf {
    std::env::var("MOME_SEED_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/seed/En_De_Fr_Py_Tokenizer/tokenizer.json")
        })
}

#[test]
fn seed_tokenizer_matches_python_ids_and_decode() {
    let (tok, sha) = load_tokenizer(&seed_path()).unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(tok.get_vocab_size(true), 32000);
    let fx: serde_json::Value = serde_json::from_slice(
        &fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_parity.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let ids = |k: &str| -> Vec<u32> {
            c[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let with = tok.encode(text, true).unwrap();
        let without = tok.encode(text, false).unwrap();
        assert_eq!(
            with.get_ids(),
            ids("ids_with_special").as_slice(),
            "{text:?}"
        );
        assert_eq!(
            without.get_ids(),
            ids("ids_without_special").as_slice(),
            "{text:?}"
        );
        assert_eq!(with.get_ids().first(), Some(&1), "BOS added");
        let dec = tok.decode(with.get_ids(), true).unwrap();
        assert_eq!(dec, c["decoded"].as_str().unwrap(), "{text:?}");
    }
}

#[test]
fn load_errors_are_typed() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_tokenizer(&d.path().join("nope.json")),
        Err(Error::Io { .. })
    ));
    let p = d.path().join("bad.json");
    fs::write(&p, "{not json").unwrap();
    let e = load_tokenizer(&p).unwrap_err();
    assert!(
        matches!(e, Error::Tokenizer { .. }) && e.to_string().contains("bad.json"),
        "{e}"
    );
}

#[test]
fn trained_tokenizer_has_seed_structure_and_reloads() {
    let d = tempfile::tempdir().unwrap();
    let train = d.path().join("bal/train");
    fs::create_dir_all(&train).unwrap();
    let mut en = String::new();
    let mut py = String::new();
    for i in 0..200 {
        en.push_str(&serde_json::json!({"id": i, "text": format!("The river number {i} flows to the sea. It is long.")}).to_string());
        en.push('\n');
        py.push_str(
            &serde_json::json!({"id": i, "text": format!("def f{i}(x):\n    return x + {i}\n")})
                .to_string(),
        );
        py.push('\n');
    }
    fs::write(train.join("en.jsonl"), en).unwrap();
    fs::write(train.join("py.jsonl"), py).unwrap();
    let out = d.path().join("tok.json");
    let cfg = TokenizerTrainConfig {
        vocab_size: 400,
        ..TokenizerTrainConfig::default()
    };
    let stats = train_tokenizer_from_dir(&d.path().join("bal"), &cfg, &out).unwrap();
    assert_eq!(stats.texts, 400);
    assert!(
        stats.vocab_size <= 400 && stats.vocab_size > 259,
        "{}",
        stats.vocab_size
    );
    assert_eq!(stats.fertility.len(), 2);
    assert!(stats.fertility["en"].tokens_per_word > 0.0);
    // For the Python check: scripts/make_tokenizer_fixture.py --check-trained FILE
    if let Ok(keep) = std::env::var("MOME_TRAINED_TOKENIZER_OUT") {
        fs::copy(&out, keep).unwrap();
    }
    let (tok, sha) = load_tokenizer(&out).unwrap();
    assert_eq!(sha, stats.sha256);
    assert_eq!(tok.token_to_id("<unk>"), Some(0));
    assert_eq!(tok.token_to_id("<s>"), Some(1));
    assert_eq!(tok.token_to_id("</s>"), Some(2));
    assert_eq!(tok.token_to_id("<0x00>"), Some(3));
    assert_eq!(tok.token_to_id("<0xFF>"), Some(258));
    let enc = tok.encode("The river ꙮ flows", true).unwrap();
    assert_eq!(enc.get_ids()[0], 1, "BOS added");
    assert!(!enc.get_ids().contains(&0), "byte fallback, no <unk>");
    assert!(!enc.get_ids().contains(&2), "no EOS");
    assert_eq!(
        tok.decode(enc.get_ids(), true).unwrap(),
        "The river ꙮ flows"
    );
    let code = "def f7(x):\n    return x + 7\n";
    let enc = tok.encode(code, false).unwrap();
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), code);
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    let seed: serde_json::Value = serde_json::from_slice(&fs::read(seed_path()).unwrap()).unwrap();
    for k in [
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
    ] {
        assert_eq!(json[k], seed[k], "{k} as in the seed");
    }
    assert_eq!(json["model"]["byte_fallback"], true);

    // Bad config and bad input write nothing.
    let bad = TokenizerTrainConfig {
        vocab_size: 100,
        ..TokenizerTrainConfig::default()
    };
    assert!(matches!(bad.validate(), Err(Error::Config(_))));
    let out2 = d.path().join("tok2.json");
    assert!(train_tokenizer(std::iter::empty(), &bad, &out2).is_err());
    fs::write(train.join("zz.jsonl"), "{broken\n").unwrap();
    let e = train_tokenizer_from_dir(&d.path().join("bal"), &cfg, &out2).unwrap_err();
    assert!(e.to_string().contains("zz.jsonl:1"), "{e}");
    assert!(!out2.exists());
}

/// An empty `train/<d>.jsonl`, or a domain with validation data and no train file, is
/// an error naming the file and the domain, unless empty domains are allowed.
#[test]
fn empty_train_domains_are_errors_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let bal = d.path().join("bal");
    fs::create_dir_all(bal.join("train")).unwrap();
    fs::create_dir_all(bal.join("validation")).unwrap();
    let mut en = String::new();
    for i in 0..50 {
        en.push_str(
            &serde_json::json!({"text": format!("The river number {i} flows.")}).to_string(),
        );
        en.push('\n');
    }
    fs::write(bal.join("train/en.jsonl"), &en).unwrap();
    fs::write(bal.join("train/fr.jsonl"), "\n{\"text\": \"\"}\n").unwrap();
    let out = d.path().join("tok.json");
    let cfg = TokenizerTrainConfig {
        vocab_size: 300,
        ..TokenizerTrainConfig::default()
    };
    let e = train_tokenizer_from_dir(&bal, &cfg, &out).unwrap_err();
    assert!(
        matches!(&e, Error::EmptyDomain { domain, .. } if domain == "fr"),
        "{e}"
    );
    assert!(e.to_string().contains("train/fr.jsonl"), "{e}");
    assert!(!out.exists(), "nothing is written");

    fs::write(bal.join("train/fr.jsonl"), &en).unwrap();
    fs::write(bal.join("validation/de.jsonl"), &en).unwrap();
    let e = train_tokenizer_from_dir(&bal, &cfg, &out).unwrap_err();
    assert!(
        matches!(&e, Error::EmptyDomain { domain, .. } if domain == "de"),
        "{e}"
    );
    assert!(e.to_string().contains("train/de.jsonl: missing"), "{e}");
    assert!(!out.exists());

    fs::write(bal.join("train/fr.jsonl"), "").unwrap();
    let allow = TokenizerTrainConfig {
        allow_empty_domains: true,
        ..cfg
    };
    let stats = train_tokenizer_from_dir(&bal, &allow, &out).unwrap();
    assert_eq!(stats.fertility["fr"].records, 0);
    assert_eq!(stats.texts, 50);
    assert!(out.is_file());
}
