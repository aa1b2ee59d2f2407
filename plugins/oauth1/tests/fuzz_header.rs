//! Bounded fuzz run of the `Authorization: OAuth` parser (property tests):
//! whatever a caller sends, parsing never panics, and what it accepts is
//! within the limits, names each parameter once, and reads back the same
//! when written out again. `PROPTEST_CASES` sets the run's length (CI runs
//! the default; the long run in docs/security.md used 10 million).

use oauth1::encoding::{encode, MAX_PARAMS, MAX_PARAM_BYTES};
use oauth1::header::{oauth_credentials, parse};
use proptest::prelude::*;

/// Header-like bytes: the characters that matter to the parser, names
/// that repeat, escapes valid and not.
fn headerish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"oauth_nonce".to_vec()),
        Just(b"oauth_signature".to_vec()),
        Just(b"realm".to_vec()),
        Just(b"=".to_vec()),
        Just(b"\"".to_vec()),
        Just(b",".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\t".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"%".to_vec()),
        any::<u8>().prop_map(|b| format!("%{b:02X}").into_bytes()),
        "[a-zA-Z0-9_~.-]{1,6}".prop_map(String::into_bytes),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn an_accepted_header_is_bounded_unique_and_reads_back(raw in headerish()) {
        if let Ok(params) = parse(&raw) {
            prop_assert!(params.len() <= MAX_PARAMS);
            let mut names: Vec<&[u8]> = params.iter().map(|p| p.name.as_slice()).collect();
            names.sort();
            let before = names.len();
            names.dedup();
            prop_assert_eq!(before, names.len(), "a name appears twice");
            for p in &params {
                prop_assert!(p.name.len() <= MAX_PARAM_BYTES && p.value.len() <= MAX_PARAM_BYTES);
            }
            let written: Vec<String> = params
                .iter()
                .map(|p| format!("{}=\"{}\"", encode(&p.name), encode(&p.value)))
                .collect();
            let again = parse(written.join(", ").as_bytes());
            prop_assert_eq!(again, Ok(params));
        }
    }

    #[test]
    fn only_the_oauth_scheme_is_taken(raw in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Some(rest) = oauth_credentials(&raw) {
            let start = raw.len() - rest.len();
            prop_assert!(raw[..start].trim_ascii_start().eq_ignore_ascii_case(b"oauth"));
        }
    }
}
