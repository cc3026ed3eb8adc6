//! Routes lines from stdin with a mome router: one JSON object per line.
//!
//! `cargo run -p mome-router --example route-text -- router.json tokenizer.json < lines.txt`

use std::io::BufRead;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: route-text ROUTER.json TOKENIZER.json < lines");
        std::process::exit(2);
    }
    let router =
        mome_router::Router::load_with_tokenizer(Path::new(&args[1]), Path::new(&args[2]))?;
    for line in std::io::stdin().lock().lines() {
        let r = router.route_text(&line?)?;
        let probs: serde_json::Map<String, serde_json::Value> = router
            .classes()
            .iter()
            .zip(&r.probabilities)
            .map(|(c, p)| (c.clone(), (*p).into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"label": r.label, "confident": r.confident, "probabilities": probs})
        );
    }
    Ok(())
}
