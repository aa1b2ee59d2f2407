use super::*;
use proptest::prelude::*;

fn strict(p: &str) -> Result<JudgedPath, PathError> {
    judge_path(p, PathOptions::default())
}

fn params(p: &str) -> Result<JudgedPath, PathError> {
    judge_path(
        p,
        PathOptions {
            allow_params: true,
            ..Default::default()
        },
    )
}

fn slashes(p: &str) -> Result<JudgedPath, PathError> {
    judge_path(
        p,
        PathOptions {
            allow_encoded_slash: true,
            ..Default::default()
        },
    )
}

#[test]
fn path_confusion_is_refused_in_every_spelling() {
    let cases: &[(&str, PathError)] = &[
        ("/upload/..;/admin/x", PathError::Params),
        ("/upload/.;x/admin", PathError::Params),
        ("/api/../admin", PathError::DotSegment),
        ("/api/./x", PathError::DotSegment),
        ("/api/%2e%2e/admin", PathError::DotSegment),
        ("/api/%2E./admin", PathError::DotSegment),
        ("/a/%2e", PathError::DotSegment),
        ("/..", PathError::DotSegment),
        ("/api/..%2Fadmin", PathError::EncodedSeparator),
        ("/p/a%2fb", PathError::EncodedSeparator),
        ("/p/a%5cb", PathError::EncodedSeparator),
        ("/a\\..\\b", PathError::Backslash),
        ("//admin", PathError::EmptySegment),
        ("/upload//admin", PathError::EmptySegment),
        ("/a/%00", PathError::EncodedControl),
        ("/a/%0d%0aX: y", PathError::NotAscii),
        ("/a/%0a", PathError::EncodedControl),
        ("/a/%7F", PathError::EncodedControl),
        ("/a/%zz", PathError::BadPercent),
        ("/a/%4", PathError::BadPercent),
        ("/a/%", PathError::BadPercent),
        ("/a/%c0%ae%c0%ae/x", PathError::NotUtf8),
        ("/a/%c0%af", PathError::NotUtf8),
        ("/a/%ed%a0%80", PathError::NotUtf8),
        ("/a/%ff", PathError::NotUtf8),
        ("a/b", PathError::NotAbsolute),
        ("*", PathError::NotAbsolute),
        ("/caf\u{e9}", PathError::NotAscii),
    ];
    for (path, why) in cases {
        assert_eq!(strict(path).err(), Some(*why), "{path}");
    }
    // Parameters allowed: a dot segment behind them is still refused.
    assert_eq!(
        params("/upload/..;/admin/x").err(),
        Some(PathError::DotSegment)
    );
    assert_eq!(params("/;x/a").err(), Some(PathError::EmptySegment));
    assert_eq!(params("/a;%00/b").err(), Some(PathError::EncodedControl));
    // Encoded slashes allowed: what they separate is judged too.
    assert_eq!(slashes("/p/group%2Fname").unwrap().path, "/p/group%2Fname");
    for bad in [
        "/p/a%2F..%2Fb",
        "/p/%2F",
        "/p/a%2F%2Fb",
        "/p/.%2Fx",
        "/p/a%5Cb",
    ] {
        assert!(slashes(bad).is_err(), "{bad}");
    }
}

#[test]
fn ordinary_paths_pass_and_are_normalised() {
    let ok = |p: &str, n: &str| {
        let j = strict(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(j.path, n, "{p}");
        assert!(!j.had_params);
    };
    ok("/", "/");
    ok("/a/", "/a/");
    ok("/file.tar.gz", "/file.tar.gz");
    ok("/a/..b/c", "/a/..b/c");
    ok("/.well-known/x", "/.well-known/x");
    ok("/%61dmin/x", "/admin/x");
    ok("/%7Euser", "/~user");
    ok("/a%20b/%3Bx", "/a%20b/%3Bx");
    ok("/q%3Fx", "/q%3Fx");
    ok("/caf%C3%A9", "/caf%C3%A9");
    let j = params("/a;jsessionid=1/b;v=2").unwrap();
    assert_eq!(j.path, "/a/b");
    assert!(j.had_params);
}

#[test]
fn prefixes_match_whole_segments_in_any_case() {
    assert!(under_prefix("/api", "/api"));
    assert!(under_prefix("/api/", "/api"));
    assert!(under_prefix("/api/x", "/api/"));
    assert!(under_prefix("/API/x", "/api"));
    assert!(under_prefix("/anything", "/"));
    assert!(!under_prefix("/apix", "/api"));
    assert!(!under_prefix("/apix", "/api/"));
    assert!(!under_prefix("/ap", "/api"));
    assert!(under_prefix("/api", "/api/"));
}

#[test]
fn hosts_with_userinfo_commas_or_bad_ports_are_refused() {
    let cases: &[(&str, HostError)] = &[
        ("attacker.example,x@jira.example.com", HostError::Userinfo),
        ("user@jira.example.com", HostError::Userinfo),
        ("jira.example.com:1,attacker.example", HostError::BadPort),
        ("jira.example.com:x", HostError::BadPort),
        ("jira.example.com:", HostError::BadPort),
        ("jira.example.com:0", HostError::BadPort),
        ("jira.example.com:65536", HostError::BadPort),
        ("jira.example.com:000080", HostError::BadPort),
        ("jira.example.com:+80", HostError::BadPort),
        ("jira.example.com,attacker.example", HostError::BadCharacter),
        ("jira example", HostError::BadCharacter),
        ("jira.example.com/x", HostError::BadCharacter),
        ("a..b", HostError::BadCharacter),
        // Found by the long fuzz run: only one trailing dot is the root.
        ("a..", HostError::BadCharacter),
        (".a", HostError::BadCharacter),
        ("[::1", HostError::BadIpLiteral),
        ("[zz]", HostError::BadIpLiteral),
        ("[::1]x", HostError::BadCharacter),
        ("[::1]:", HostError::BadPort),
        ("", HostError::Empty),
        (":80", HostError::Empty),
    ];
    for (host, why) in cases {
        assert_eq!(judge_host(host).err(), Some(*why), "{host}");
    }
}

#[test]
fn hosts_are_normalised() {
    let j = judge_host("Wiki.Test:8080").unwrap();
    assert_eq!((j.host.as_str(), j.port), ("wiki.test", Some(8080)));
    assert_eq!(j.authority(), "wiki.test:8080");
    assert_eq!(judge_host("wiki.test.").unwrap().host, "wiki.test");
    assert_eq!(judge_host("[::1]:80").unwrap().host, "[::1]");
    assert_eq!(
        judge_host("[0:0::1]").unwrap().authority(),
        "[::1]",
        "IPv6 literals are printed canonically"
    );
    assert_eq!(judge_host("127.0.0.1").unwrap().host, "127.0.0.1");
    assert_eq!(judge_host("my_host").unwrap().host, "my_host");
}

/// Path-like strings: the characters that matter to the judgement, and
/// percent-escapes of interesting bytes, in any order.
fn pathish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just(";".to_string()),
        Just("%".to_string()),
        Just("\\".to_string()),
        "[a-zA-Z0-9=~_-]{1,3}",
        any::<u8>().prop_map(|b| format!("%{b:02x}")),
        any::<u8>().prop_map(|b| format!("%{b:02X}")),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #[test]
    fn an_accepted_path_has_no_confusable_segment(raw in pathish(), allow in any::<bool>()) {
        if let Ok(j) = judge_path(&raw, PathOptions { allow_params: allow, allow_encoded_slash: false }) {
            prop_assert!(j.path.starts_with('/'));
            prop_assert!(!j.path.contains("//"));
            prop_assert!(!j.path.contains(';'));
            prop_assert!(!j.path.contains('\\'));
            for seg in j.path[1..].split('/') {
                let d = decode_segment(seg, false).expect("accepted segments decode");
                prop_assert!(d != "." && d != "..", "{raw} -> {}", j.path);
                prop_assert!(!d.contains('/') && !d.contains('\\') && !d.contains('\0'));
            }
            // Judging the judged path changes nothing.
            let again = judge_path(&j.path, PathOptions::default());
            prop_assert_eq!(again.map(|a| a.path), Ok(j.path.clone()));
            prop_assert!(allow || !j.had_params);
        }
    }

    #[test]
    fn any_string_is_judged_without_panicking(raw in ".{0,64}") {
        let _ = judge_path(&raw, PathOptions::default());
        let _ = judge_host(&raw);
    }

    #[test]
    fn an_accepted_host_rebuilds_to_itself(
        raw in "[a-zA-Z0-9.:@,\\[\\]_ -]{0,40}",
    ) {
        if let Ok(j) = judge_host(&raw) {
            let auth = j.authority();
            prop_assert!(!auth.contains('@') && !auth.contains(',') && !auth.contains(' '));
            prop_assert_eq!(judge_host(&auth), Ok(j.clone()));
            prop_assert!(auth.parse::<http::uri::Authority>().is_ok(), "{auth}");
        }
    }

    #[test]
    fn prefix_matches_are_segment_bounded(path in pathish(), prefix in "/[a-z]{1,4}/?") {
        if under_prefix(&path, &prefix) {
            let p = prefix.trim_end_matches('/').to_ascii_lowercase();
            let lower = path.to_ascii_lowercase();
            let under = format!("{p}/");
            prop_assert!(lower == p || lower.starts_with(&under));
        }
    }
}
