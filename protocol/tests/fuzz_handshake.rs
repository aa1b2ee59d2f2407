//! Bounded fuzz run of the handshake codec (property tests): whatever an
//! unauthenticated peer sends, decoding never panics, never accepts a
//! message over the size limit or a name that could not be logged safely,
//! and every accepted message encodes back to something that decodes to
//! itself. `PROPTEST_CASES` sets the run's length (CI runs the default;
//! the long run in docs/security.md used 10 million).

use proptest::prelude::*;
use protocol::handshake::{valid_name, MAX_HANDSHAKE_MESSAGE};
use protocol::{Control, Message, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// JSON-ish text close to real messages, so the decoder's checks are
/// reached and not only its JSON parser's.
fn messageish() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("hello"),
        Just("challenge"),
        Just("proof"),
        Just("welcome"),
        Just("rejected"),
        Just("other"),
    ];
    let field = prop_oneof![
        Just("version"),
        Just("tunnel_id"),
        Just("agent"),
        Just("nonce"),
        Just("mac"),
        Just("tunnel_name"),
        Just("reason"),
        Just("extra"),
    ];
    let value = prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        Just(PROTOCOL_VERSION.to_string()),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[A-Za-z0-9._-]{0,140}".prop_map(|s| format!("\"{s}\"")),
        Just("null".to_string()),
        Just("[]".to_string()),
    ];
    (
        kind,
        proptest::collection::vec((field, value), 0..5),
        any::<bool>(),
    )
        .prop_map(|(kind, fields, truncate)| {
            let mut s = format!("{{\"type\":\"{kind}\"");
            for (f, v) in fields {
                s += &format!(",\"{f}\":{v}");
            }
            s.push('}');
            if truncate {
                // Cut at a character boundary: the text stays valid UTF-8.
                let mut at = s.len() / 2;
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.truncate(at);
            }
            s
        })
}

proptest! {
    #[test]
    fn the_decoder_accepts_only_well_formed_messages(text in prop_oneof![messageish(), ".{0,200}"]) {
        if let Ok(msg) = Message::decode(&text) {
            prop_assert!(text.len() <= MAX_HANDSHAKE_MESSAGE);
            if let Message::Hello { version, tunnel_id, agent, .. } = &msg {
                prop_assert!((MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(version));
                prop_assert!(valid_name(tunnel_id) && valid_name(agent));
            }
            prop_assert_eq!(Message::decode(&msg.encode()), Ok(msg));
        }
    }

    #[test]
    fn oversized_messages_are_refused_before_parsing(pad in 0usize..64) {
        let text = format!("{{\"type\":\"proof\",\"mac\":\"{}\"}}", "A".repeat(MAX_HANDSHAKE_MESSAGE + pad));
        prop_assert!(Message::decode(&text).is_err());
    }

    #[test]
    fn control_lines_are_only_what_they_say(line in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Some(c) = Control::parse(&line) {
            prop_assert_eq!(c.as_line(), [line.as_slice(), b"\n"].concat());
        }
    }
}
