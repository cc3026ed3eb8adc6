//! Router file loader: arbitrary bytes must give a typed error or a router that
//! routes, serialises and loads again to the same routing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mome_router::Router;

fuzz_target!(|data: &[u8]| {
    let Ok(router) = Router::from_json(data) else {
        return;
    };
    let k = router.classes().len();
    let seqs: [&[u32]; 4] = [&[], &[1, 2], &[10, 11, 12, 13, 10_000], &[u32::MAX, 0, 7]];
    for s in seqs {
        let r = router.route(s);
        assert_eq!(r.probabilities.len(), k);
        assert!(r.index < k);
        assert!(r.probabilities.iter().all(|p| p.is_finite() && *p >= 0.0));
    }
    let bytes = router.to_json().expect("a loaded router serialises");
    let back = Router::from_json(&bytes).expect("a saved router loads again");
    for s in seqs {
        assert_eq!(back.route(s), router.route(s));
    }
});
