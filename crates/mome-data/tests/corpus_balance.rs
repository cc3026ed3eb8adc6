//! Corpus readers and token balancing.

use std::fs;
use std::path::{Path, PathBuf};

use mome_data::balance::{
    balance, read_output, reference_select, spread_percent, subset_select, walk_select,
    BalanceConfig, BalanceReport, DomainSpec, Strategy,
};
use mome_data::corpus::{
    open, read_all, split_train_valid, CorpusSpec, SourceKind, Split, Utf8Policy,
};
use mome_data::tokenizer::load_tokenizer;
use mome_data::Error;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn seed_tokenizer() -> Tokenizer {
    let p = std::env::var("MOME_SEED_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/seed/En_De_Fr_Py_Tokenizer/tokenizer.json")
        });
    load_tokenizer(&p).expect("seed tokenizer").0
}

fn jsonl_spec(p: &Path, id: Option<&str>) -> CorpusSpec {
    CorpusSpec {
        id_field: id.map(String::from),
        ..CorpusSpec::from_path(p)
    }
}

#[test]
fn jsonl_reader_string_and_numeric_ids_and_default_ids() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.jsonl");
    fs::write(
        &p,
        "{\"id\": \"Q42\", \"text\": \"a\"}\n\n{\"id\": 7, \"text\": \"b\"}\r\n",
    )
    .unwrap();
    let recs = read_all(&jsonl_spec(&p, Some("id"))).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!((recs[0].id.as_str(), recs[0].text.as_str()), ("Q42", "a"));
    assert_eq!((recs[1].id.as_str(), recs[1].text.as_str()), ("7", "b"));
    let recs = read_all(&jsonl_spec(&p, None)).unwrap();
    assert_eq!(recs[1].id, format!("{}:3", p.display()));
}

#[test]
fn parquet_reader_reads_wiki40b_fixture() {
    let spec = CorpusSpec {
        id_field: Some("wikidata_id".into()),
        ..CorpusSpec::from_path(fixtures().join("wiki40b_tiny/fr.parquet"))
    };
    let recs = read_all(&spec).unwrap();
    assert_eq!(recs.len(), 8);
    assert_eq!(recs[0].id, "Q2");
    assert!(recs[0].text.contains("_START_ARTICLE_"));
    assert!(recs[0].text.contains("française"));
    let bad = CorpusSpec {
        id_field: Some("nope".into()),
        ..spec
    };
    let e = read_all(&bad).unwrap_err();
    assert!(matches!(e, Error::MissingField { .. }), "{e}");
    // Locations are `file:N` (N the 1-based row of a parquet file).
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("fr.parquet:1:"),
        "{e}"
    );
}

#[test]
fn text_dir_and_code_dir_recursive() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("txt");
    fs::create_dir_all(t.join("sub")).unwrap();
    fs::write(t.join("b.txt"), "bee").unwrap();
    fs::write(t.join("sub/a.txt"), "ay").unwrap();
    fs::write(t.join(".hidden"), "no").unwrap();
    let recs = read_all(&CorpusSpec::from_path(&t)).unwrap();
    let ids: Vec<_> = recs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["b.txt", "sub/a.txt"]);

    let c = d.path().join("code");
    fs::create_dir_all(c.join("pkg/inner")).unwrap();
    fs::write(c.join("pkg/inner/z.py"), "def z():\n\treturn 1\n").unwrap();
    fs::write(c.join("a.py"), "x = 1\n").unwrap();
    fs::write(c.join("README.md"), "skip me").unwrap();
    let mut r = open(&CorpusSpec::from_path(&c)).unwrap();
    let a = r.next().unwrap().unwrap();
    let z = r.next().unwrap().unwrap();
    assert!(r.next().is_none());
    assert_eq!((a.id.as_str(), z.id.as_str()), ("a.py", "pkg/inner/z.py"));
    assert_eq!(z.text, "def z():\n\treturn 1\n");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.jsonl");
    fs::write(&p, "{\"text\": \"ok\"}\n{\"text\": oops}\n").unwrap();
    let e = read_all(&jsonl_spec(&p, None)).unwrap_err();
    assert!(matches!(e, Error::JsonLine { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("bad.jsonl:2"), "{e}");

    fs::write(&p, "{\"text\": \"ok\", \"id\": 1}\n{\"id\": 2}\n").unwrap();
    let e = read_all(&jsonl_spec(&p, Some("id"))).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("bad.jsonl:2: field `text`"), "{m}");
    fs::write(&p, "{\"text\": \"ok\", \"id\": [1]}\n").unwrap();
    assert!(matches!(
        read_all(&jsonl_spec(&p, Some("id"))),
        Err(Error::MissingField { .. })
    ));

    let mut bytes = b"{\"text\": \"fine\"}\n{\"text\": \"".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\"}\n{\"text\": \"after\"}\n");
    fs::write(&p, &bytes).unwrap();
    let e = read_all(&jsonl_spec(&p, None)).unwrap_err();
    assert!(matches!(e, Error::InvalidUtf8 { line: Some(2), .. }), "{e}");
    assert!(e.to_string().contains("bad.jsonl:2"));
    let mut spec = jsonl_spec(&p, None);
    spec.on_invalid_utf8 = Utf8Policy::Skip;
    let mut r = open(&spec).unwrap();
    let texts: Vec<String> = r.by_ref().map(|x| x.unwrap().text).collect();
    assert_eq!(texts, ["fine", "after"]);
    assert_eq!(r.skipped_invalid_utf8(), 1);

    let e = open(&CorpusSpec::from_path(d.path().join("missing.jsonl"))).unwrap_err();
    assert!(e.to_string().contains("missing.jsonl"), "{e}");
    let empty = d.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        open(&CorpusSpec::from_path(&empty)),
        Err(Error::InvalidPath { .. })
    ));
    let odd = d.path().join("x.csv");
    fs::write(&odd, "a").unwrap();
    assert!(open(&CorpusSpec::from_path(&odd)).is_err());
    let mut forced = CorpusSpec::from_path(&odd);
    forced.kind = Some(SourceKind::TextDir);
    assert_eq!(read_all(&forced).unwrap()[0].text, "a");
}

#[test]
fn split_is_deterministic_and_near_fraction() {
    let n = 4000;
    let valid = (0..n)
        .filter(|i| split_train_valid(&format!("Q{i}"), 0.1, 7) == Split::Valid)
        .count();
    assert!((300..500).contains(&valid), "{valid}");
    for i in 0..50 {
        let id = format!("Q{i}");
        assert_eq!(
            split_train_valid(&id, 0.3, 1),
            split_train_valid(&id, 0.3, 1)
        );
    }
    assert_eq!(split_train_valid("Q1", 0.0, 1), Split::Train);
}

#[test]
fn reference_rule_on_hand_made_counts() {
    // Totals: a = 100, b = 120; limit = 100 * 1.05 = 105 exactly.
    let counts = vec![vec![50, 50], vec![60, 60]];
    let (keep, limit) = reference_select(&counts, 5.0);
    assert_eq!(limit, 105.0);
    assert_eq!(keep, [true, false]); // b would reach 120 > 105
                                     // Tie: reaching exactly the limit is allowed.
    let counts = vec![vec![100, 5], vec![100, 5], vec![105, 0]];
    let (keep, _) = reference_select(&counts, 5.0);
    assert_eq!(keep, [true, true]); // third domain total 105 == limit
                                    // Domain b limits: its second record overflows, third fits (skip, not stop).
    let counts = vec![vec![10, 10, 10, 70], vec![10, 95, 5, 5]];
    let (keep, limit) = reference_select(&counts, 0.0);
    assert_eq!(limit, 100.0);
    assert_eq!(keep, [true, false, true, true]);
    assert_eq!(walk_select(&[3, 10, 2, 1], 6.0), [true, false, true, true]);
}

#[test]
fn subset_rule_reaches_band_where_reference_does_not() {
    // fr is ~30% longer on every article; article 3 is balanced.
    let en: Vec<u64> = vec![100, 80, 120, 100, 90, 110, 100, 100];
    let fr: Vec<u64> = en
        .iter()
        .enumerate()
        .map(|(i, &x)| if i == 3 { x } else { x * 13 / 10 })
        .collect();
    let counts = vec![en.clone(), fr.clone()];
    let (rk, _) = reference_select(&counts, 5.0);
    let tot = |c: &[u64], k: &[bool]| {
        c.iter()
            .zip(k)
            .filter(|(_, &x)| x)
            .map(|(t, _)| t)
            .sum::<u64>()
    };
    let s_ref = spread_percent(&[tot(&en, &rk), tot(&fr, &rk)]);
    assert!(s_ref > 20.0, "reference spread {s_ref}");
    let names = vec!["en".to_string(), "fr".to_string()];
    let sk = subset_select(&counts, &names, 5.0, None).unwrap();
    let s = spread_percent(&[tot(&en, &sk), tot(&fr, &sk)]);
    assert!(s <= 5.0, "subset spread {s}");
    assert!(sk[3], "the balanced article must be kept");
    // Impossible: every article has fr 30% longer.
    let counts = vec![vec![10, 10], vec![13, 13]];
    let e = subset_select(&counts, &names, 5.0, None).unwrap_err();
    assert!(matches!(e, Error::BandUnreachable { .. }), "{e}");
}

fn sentence(lang: &str, i: usize, j: usize) -> String {
    match lang {
        "en" => format!("The article {i} says fact {j} about the river."),
        "fr" => format!("L'article {i} affirme le fait {j} au sujet de la rivière très longue."),
        _ => format!("Der Artikel {i} nennt die Tatsache {j} über den sehr langen Fluss."),
    }
}

/// An aligned corpus: 30 articles; fr/de versions ~30% longer; each domain's
/// order differs and each has one id the others lack.
fn aligned_corpus(root: &Path) -> Vec<DomainSpec> {
    let mut out = Vec::new();
    for lang in ["en", "fr", "de"] {
        let mut lines = Vec::new();
        let mut ids: Vec<usize> = (0..30).collect();
        if lang != "en" {
            ids.reverse();
        }
        for i in ids {
            // fr/de sentences run ~30% longer; every third article is shorter there.
            let e = 2 + i % 5;
            let n = if lang == "en" || i % 3 != 0 { e } else { 1 };
            let paras: Vec<String> = (0..n).map(|j| sentence(lang, i, j)).collect();
            let text = format!(
                "{}\n\n{}",
                paras[..n / 2].join(" "),
                paras[n / 2..].join(" ")
            );
            lines.push(
                serde_json::json!({"wikidata_id": format!("Q{i}"), "text": text}).to_string(),
            );
        }
        lines.push(
            serde_json::json!({"wikidata_id": format!("only-{lang}"), "text": "x"}).to_string(),
        );
        let p = root.join(format!("{lang}.jsonl"));
        fs::write(&p, lines.join("\n")).unwrap();
        out.push(DomainSpec {
            name: lang.into(),
            train: jsonl_spec(&p, Some("wikidata_id")),
            validation: None,
        });
    }
    out
}

fn run(cfg: &BalanceConfig, out: &Path) -> mome_data::Result<BalanceReport> {
    balance(cfg, &seed_tokenizer(), out)
}

fn ids_of(p: &Path) -> Vec<String> {
    read_output(p).unwrap().into_iter().map(|r| r.id).collect()
}

#[test]
fn aligned_strategies_subset_truncate_reach_band_reference_does_not() {
    let d = tempfile::tempdir().unwrap();
    let domains = aligned_corpus(d.path());
    let cfg = |s: Strategy| BalanceConfig {
        domains: domains.clone(),
        common_articles: true,
        strategy: Some(s),
        ..BalanceConfig::default()
    };
    let r = run(&cfg(Strategy::Reference), &d.path().join("ref")).unwrap();
    assert!(
        r.spread_percent_reached > 10.0,
        "reference spread {}",
        r.spread_percent_reached
    );
    assert_eq!(r.aligned_articles, 30);
    assert_eq!(r.domains["en"].dropped_reasons["not in every domain"], 1);

    for (s, name) in [(Strategy::Subset, "subset"), (Strategy::Truncate, "trunc")] {
        let out = d.path().join(name);
        let r = run(&cfg(s), &out).unwrap();
        assert!(
            r.spread_percent_reached <= 5.0,
            "{name}: {}",
            r.spread_percent_reached
        );
        let report: BalanceReport =
            serde_json::from_slice(&fs::read(out.join("balance_report.json")).unwrap()).unwrap();
        assert_eq!(report.domains, r.domains);
        assert_eq!(report.strategy, s);
        approx::assert_relative_eq!(
            report.spread_percent_reached,
            r.spread_percent_reached,
            epsilon = 1e-9
        );
        let en = ids_of(&out.join("train/en.jsonl"));
        assert!(!en.is_empty());
        assert_eq!(en, ids_of(&out.join("train/fr.jsonl")), "{name}");
        assert_eq!(en, ids_of(&out.join("train/de.jsonl")), "{name}");
        // First domain's order.
        let pos: Vec<usize> = en.iter().map(|i| i[1..].parse().unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]));
        // Reported kept tokens are the real counts of the written texts.
        let tok = seed_tokenizer();
        for dom in ["en", "fr", "de"] {
            let n: u64 = read_output(&out.join(format!("train/{dom}.jsonl")))
                .unwrap()
                .iter()
                .map(|r| tok.encode(r.text.as_str(), false).unwrap().len() as u64)
                .sum();
            assert_eq!(n, r.domains[dom].tokens_after, "{name} {dom}");
        }
        if s == Strategy::Truncate {
            assert_eq!(en.len(), 30);
            assert!(r.domains["fr"].records_trimmed > 0);
            assert_eq!(r.domains["en"].records_trimmed, 0);
        } else {
            assert!(r.domains["fr"].dropped_reasons["selected out by subset"] > 0);
        }
    }
}

#[test]
fn free_domains_walk_and_validation_split() {
    let d = tempfile::tempdir().unwrap();
    let mut domains = aligned_corpus(d.path());
    let code = d.path().join("code");
    fs::create_dir_all(code.join("pkg")).unwrap();
    for i in 0..40 {
        fs::write(
            code.join(format!("pkg/m{i:02}.py")),
            format!("def f{i}(x):\n    return x + {i}\n"),
        )
        .unwrap();
    }
    domains.push(DomainSpec {
        name: "py".into(),
        train: CorpusSpec::from_path(&code),
        validation: None,
    });
    let cfg = BalanceConfig {
        domains: domains.clone(),
        common_articles: true,
        common_domains: vec!["en".into(), "fr".into(), "de".into()],
        valid_fraction: 0.2,
        split_seed: 3,
        ..BalanceConfig::default()
    };
    let out = d.path().join("out");
    let r = run(&cfg, &out).unwrap();
    assert_eq!(r.strategy, Strategy::Subset);
    assert!(
        r.spread_percent_reached <= 5.0,
        "{}",
        r.spread_percent_reached
    );
    let v = ids_of(&out.join("validation/en.jsonl"));
    assert_eq!(v, ids_of(&out.join("validation/fr.jsonl")));
    let t = ids_of(&out.join("train/en.jsonl"));
    assert!(
        v.iter().all(|id| !t.contains(id)),
        "validation ids are not in train"
    );
    assert!(r.domains["py"].records_after > 0);

    // Without common articles: per-domain walk, band guaranteed.
    let cfg = BalanceConfig {
        domains,
        ..BalanceConfig::default()
    };
    let r = run(&cfg, &d.path().join("walk")).unwrap();
    assert_eq!(r.strategy, Strategy::Reference);
    assert!(
        r.spread_percent_reached <= 5.0,
        "{}",
        r.spread_percent_reached
    );
    let min = r.domains.values().map(|x| x.tokens_before).min().unwrap();
    let smallest = r.domains.values().find(|x| x.tokens_before == min).unwrap();
    assert_eq!(
        smallest.tokens_after, min,
        "the smallest domain keeps everything"
    );
}

#[test]
fn config_errors_empty_domain_and_atomic_output() {
    let d = tempfile::tempdir().unwrap();
    let domains = aligned_corpus(d.path());
    let out = d.path().join("out");
    let bad = |f: &dyn Fn(&mut BalanceConfig)| {
        let mut c = BalanceConfig {
            domains: domains.clone(),
            ..BalanceConfig::default()
        };
        f(&mut c);
        run(&c, &out).unwrap_err()
    };
    assert!(matches!(
        bad(&|c| c.max_diff_percent = -1.0),
        Error::Config(_)
    ));
    assert!(matches!(
        bad(&|c| c.max_diff_percent = f64::NAN),
        Error::Config(_)
    ));
    assert!(matches!(bad(&|c| c.valid_fraction = 1.0), Error::Config(_)));
    assert!(matches!(bad(&|c| c.domains.truncate(1)), Error::Config(_)));
    let e = bad(&|c| c.domains[1].name = "en".into());
    assert!(e.to_string().contains("duplicate domain"), "{e}");
    assert!(matches!(
        bad(&|c| c.strategy = Some(Strategy::Subset)),
        Error::Config(_)
    ));
    let e = bad(&|c| {
        c.common_articles = true;
        c.domains[0].train.id_field = None;
    });
    assert!(e.to_string().contains("id field"), "{e}");

    // Empty domain: fails after counting began; no output folder is left.
    let empty = d.path().join("empty.jsonl");
    fs::write(&empty, "\n").unwrap();
    let e = bad(&|c| c.domains[2].train = jsonl_spec(&empty, Some("wikidata_id")));
    assert!(
        matches!(e, Error::EmptyDomain { ref domain, .. } if domain == "de"),
        "{e}"
    );
    // No common ids.
    let other = d.path().join("other.jsonl");
    fs::write(&other, "{\"wikidata_id\": \"Z1\", \"text\": \"hello\"}\n").unwrap();
    let e = bad(&|c| {
        c.common_articles = true;
        c.domains[2].train = jsonl_spec(&other, Some("wikidata_id"));
    });
    assert!(matches!(e, Error::NoCommonIds { .. }), "{e}");
    // A malformed line late in a domain fails the run: nothing at `out`.
    let broken = d.path().join("broken.jsonl");
    let mut s = fs::read_to_string(d.path().join("de.jsonl")).unwrap();
    s.push_str("\n{broken\n");
    fs::write(&broken, s).unwrap();
    let e = bad(&|c| c.domains[2].train = jsonl_spec(&broken, Some("wikidata_id")));
    assert!(e.to_string().contains("broken.jsonl:32"), "{e}");
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        6,
        "no partial folders left"
    );
}

#[test]
fn parquet_domains_balance_with_common_articles() {
    let d = tempfile::tempdir().unwrap();
    let domains = ["en", "fr", "de"]
        .iter()
        .map(|l| DomainSpec {
            name: (*l).into(),
            train: CorpusSpec {
                id_field: Some("wikidata_id".into()),
                ..CorpusSpec::from_path(fixtures().join(format!("wiki40b_tiny/{l}.parquet")))
            },
            validation: None,
        })
        .collect();
    let cfg = BalanceConfig {
        domains,
        common_articles: true,
        strategy: Some(Strategy::Reference),
        ..BalanceConfig::default()
    };
    let out = d.path().join("o");
    let r = run(&cfg, &out).unwrap();
    // Common to en, fr, de: Q1..Q6 minus none = Q1, Q2, Q3, Q4, Q5, Q6.
    assert_eq!(r.aligned_articles, 6);
    let en = ids_of(&out.join("train/en.jsonl"));
    assert_eq!(en, ids_of(&out.join("train/de.jsonl")));
    assert!(en
        .iter()
        .all(|i| ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6"].contains(&i.as_str())));
}
