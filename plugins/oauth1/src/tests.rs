//! The published vectors (shared/oauth1-vectors.md: RFC 5849 and the
//! long-standing "OAuth test cases") and the negative cases, run against
//! the same code paths the component uses.

use alloc::{
    collections::BTreeSet,
    format,
    string::{String, ToString},
    vec,
    vec::Vec,
};

use rsa::{pkcs8::DecodePrivateKey, Pkcs1v15Sign, RsaPrivateKey};
use sha1::{Digest, Sha1};

use crate::config::parse_origin;
use crate::encoding::{encode, parse_form};
use crate::policy::signature_base_string;
use crate::signature::{
    base_string, base_string_uri, decode_signature, encode_signature, hmac_key, hmac_sign,
    hmac_verify, normalized_parameters, parse_rsa_public_key, rsa_verify, Method,
};
use crate::Header;
use crate::{nonce_key, Decision, Host, Policy, Problem, Refusal, Request, Verdict};

// ---------------------------------------------------------------- fixtures

/// The RSA-SHA1 vector's public key.
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC0YjCwIfYoprq/FQO6lb3asXrx
LlJFuCvtinTF5p0GxvQGu5O3gYytUvtC2JlYzypSRjVxwxrsuRcP3e641SdASwfr
mzyvIgP08N4S0IFzEURkV1wp/IpH7kH41EtbmUmrXSwfNZsnQRE5SYSOhh+LcK2w
yQkdgcMv11l4KoBkcwIDAQAB
-----END PUBLIC KEY-----
";

/// The same key as PKCS#1 (`openssl rsa -pubin -RSAPublicKey_out`).
const RSA_PUBLIC_PKCS1_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIGJAoGBALRiMLAh9iimur8VA7qVvdqxevEuUkW4K+2KdMXmnQbG9Aa7k7eBjK1S
+0LYmVjPKlJGNXHDGuy5Fw/d7rjVJ0BLB+ubPK8iA/Tw3hLQgXMRRGRXXCn8ikfu
QfjUS1uZSatdLB81mydBETlJhI6GH4twrbDJCR2Bwy/XWXgqgGRzAgMBAAE=
-----END RSA PUBLIC KEY-----
";

/// The vector's private key, for signing requests of our own.
const RSA_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBALRiMLAh9iimur8V
A7qVvdqxevEuUkW4K+2KdMXmnQbG9Aa7k7eBjK1S+0LYmVjPKlJGNXHDGuy5Fw/d
7rjVJ0BLB+ubPK8iA/Tw3hLQgXMRRGRXXCn8ikfuQfjUS1uZSatdLB81mydBETlJ
hI6GH4twrbDJCR2Bwy/XWXgqgGRzAgMBAAECgYBYWVtleUzavkbrPjy0T5FMou8H
X9u2AC2ry8vD/l7cqedtwMPp9k7TubgNFo+NGvKsl2ynyprOZR1xjQ7WgrgVB+mm
uScOM/5HVceFuGRDhYTCObE+y1kxRloNYXnx3ei1zbeYLPCHdhxRYW7T0qcynNmw
rn05/KO2RLjgQNalsQJBANeA3Q4Nugqy4QBUCEC09SqylT2K9FrrItqL2QKc9v0Z
zO2uwllCbg0dwpVuYPYXYvikNHHg+aCWF+VXsb9rpPsCQQDWR9TT4ORdzoj+Nccn
qkMsDmzt0EfNaAOwHOmVJ2RVBspPcxt5iN4HI7HNeG6U5YsFBb+/GZbgfBT3kpNG
WPTpAkBI+gFhjfJvRw38n3g/+UeAkwMI2TJQS4n8+hid0uus3/zOjDySH3XHCUno
cn1xOJAyZODBo47E+67R4jV1/gzbAkEAklJaspRPXP877NssM5nAZMU0/O/NGCZ+
3jPgDUno6WbJn5cqm8MqWhW1xGkImgRk+fkDBquiq4gPiT898jusgQJAd5Zrr6Q8
AO/0isr/3aa6O6NLQxISLKcPDk2NOccAfS/xOtfOz4sJYM3+Bs4Io9+dZGSDCA54
Lw03eHTNQghS0A==
-----END PRIVATE KEY-----
";

/// Another 1024-bit key (made with `openssl genpkey` for these tests):
/// "the wrong key".
const OTHER_RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC142wWB24vgR89T7GSWuKseHYB
y/1nv7cU+vNmnuEPME6WKd/kZwExoaueINw1VpS0RmBmSfV/PvW/ndqsHKx/u545
Akr6y9QsMhyr272U+OUIkVFGGW16rAZbFjpjWBH5dtinxI0F0r9YPmgasCqExABl
RvLGOwnDkhAw88YYuQIDAQAB
-----END PUBLIC KEY-----
";

const RSA_VECTOR_BASE: &str = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacaction.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3D13917289812797014437%26oauth_signature_method%3DRSA-SHA1%26oauth_timestamp%3D1196666512%26oauth_version%3D1.0%26size%3Doriginal";
const RSA_VECTOR_SIGNATURE: &str = "jvTp/wX1TYtByB1m+Pbyo0lnCOLIsyGCH7wke8AUs3BpnwZJtAuEJkvQL2/9n4s5wUmUl4aCI4BwpraNx4RtEXMe5qg5T1LVTGliMRpKasKsW//e+RinhejgCuzoH26dyF8iY2ZZ/5D1ilgeijhV/vBka5twt399mXwaYdCwFYE=";

const RFC_1_2_BASE: &str = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3DchapoH%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131202%26oauth_token%3Dnnch734d00sl2jdk%26size%3Doriginal";

const HMAC_TABLE_BASE: &str = "GET&http%3A%2F%2Fphotos.example.net%2Fphotos&file%3Dvacation.jpg%26oauth_consumer_key%3Ddpf43f3p2l4k3l03%26oauth_nonce%3Dkllo9940pd9333jh%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1191242096%26oauth_token%3Dnnch734d00sl2jdk%26oauth_version%3D1.0%26size%3Doriginal";

/// A clock and a nonce set, like the host's.
struct FakeHost {
    now: u64,
    seen: BTreeSet<String>,
    inserts: Vec<(String, u32)>,
}

impl FakeHost {
    fn at(now: u64) -> FakeHost {
        FakeHost {
            now,
            seen: BTreeSet::new(),
            inserts: Vec::new(),
        }
    }
}

impl Host for FakeHost {
    fn now(&self) -> u64 {
        self.now
    }

    fn insert_if_absent(&mut self, key: &str, ttl_secs: u32) -> bool {
        self.inserts.push((key.to_string(), ttl_secs));
        self.seen.insert(key.to_string())
    }
}

fn request(
    method: &str,
    path_with_query: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Request {
    Request {
        method: method.into(),
        scheme: "https".into(),
        authority: "gateway.example".into(),
        path_with_query: path_with_query.into(),
        headers: headers
            .iter()
            .map(|(n, v)| Header {
                name: n.to_string(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
        body_prefix: body.map(|b| b.as_bytes().to_vec()),
    }
}

/// `OAuth realm="...", name="value", ...` with values encoded as §3.5.1 asks.
fn oauth_header(realm: Option<&str>, params: &[(&str, &str)]) -> String {
    let mut parts: Vec<String> = realm
        .map(|r| format!("realm=\"{r}\""))
        .into_iter()
        .collect();
    parts.extend(
        params
            .iter()
            .map(|(n, v)| format!("{}=\"{}\"", encode(n.as_bytes()), encode(v.as_bytes()))),
    );
    format!("OAuth {}", parts.join(", "))
}

fn policy(config: serde_json::Value) -> Policy {
    Policy::new(&config.to_string()).unwrap()
}

/// The §1.2 consumer, HMAC.
fn photos_hmac_policy() -> Policy {
    policy(serde_json::json!({
        "public_base_url": "http://photos.example.net",
        "consumers": [{
            "key": "dpf43f3p2l4k3l03",
            "secret": "kd94hf93k423kf44",
            "token_secrets": {"nnch734d00sl2jdk": "pfkkdhi9sl3r4s00"}
        }]
    }))
}

/// The RSA vector's consumer, with `key` as its public key.
fn photos_rsa_policy_with(key: &str) -> Policy {
    policy(serde_json::json!({
        "public_base_url": "http://photos.example.net",
        "consumers": [{"key": "dpf43f3p2l4k3l03", "rsa_public_key": key}]
    }))
}

fn photos_rsa_policy() -> Policy {
    photos_rsa_policy_with(RSA_PUBLIC_PEM)
}

/// The RSA-SHA1 vector as a request, with its path and query replaceable.
fn rsa_vector_request(path_with_query: &str) -> Request {
    let auth = oauth_header(
        Some("Photos"),
        &[
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_nonce", "13917289812797014437"),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", "1196666512"),
            ("oauth_version", "1.0"),
            ("oauth_signature", RSA_VECTOR_SIGNATURE),
        ],
    );
    request("GET", path_with_query, &[("authorization", &auth)], None)
}

const RSA_VECTOR_TIME: u64 = 1_196_666_512;

/// The §1.2 request, with its signature replaceable.
fn rfc_1_2_request(signature: &str) -> Request {
    let auth = oauth_header(
        Some("Photos"),
        &[
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "137131202"),
            ("oauth_nonce", "chapoH"),
            ("oauth_signature", signature),
        ],
    );
    request(
        "GET",
        "/photos?file=vacation.jpg&size=original",
        &[("host", "photos.example.net"), ("authorization", &auth)],
        None,
    )
}

const RFC_1_2_TIME: u64 = 137_131_202;

/// Signs `req` (which already carries its other OAuth parameters in the
/// Authorization header) with HMAC and adds `oauth_signature` there.
fn sign_hmac(
    mut req: Request,
    origin: &str,
    method: Method,
    secret: &str,
    token_secret: &str,
) -> Request {
    let base = signature_base_string(origin, &req).unwrap().unwrap();
    let sig = hmac_sign(
        method,
        hmac_key(secret, token_secret).as_bytes(),
        base.as_bytes(),
    )
    .unwrap();
    add_signature(&mut req, &encode_signature(&sig));
    req
}

/// Signs `req` with the vector's private key.
fn sign_rsa(mut req: Request, origin: &str) -> Request {
    let base = signature_base_string(origin, &req).unwrap().unwrap();
    let sig = rsa_private_key()
        .sign(Pkcs1v15Sign::new::<Sha1>(), &Sha1::digest(base.as_bytes()))
        .unwrap();
    add_signature(&mut req, &encode_signature(&sig));
    req
}

fn add_signature(req: &mut Request, signature: &str) {
    let h = req
        .headers
        .iter_mut()
        .find(|h| h.name == "authorization")
        .expect("an Authorization header to sign");
    h.value.extend_from_slice(
        format!(", oauth_signature=\"{}\"", encode(signature.as_bytes())).as_bytes(),
    );
}

fn rsa_private_key() -> RsaPrivateKey {
    let b64: String = RSA_PRIVATE_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    RsaPrivateKey::from_pkcs8_der(&der).unwrap()
}

/// Two-legged HMAC request parameters (consumer `k2` of [`hmac_policy`])
/// at time 1000 with `nonce`.
fn k2_params(nonce: &str) -> Vec<(&'static str, String)> {
    vec![
        ("oauth_consumer_key", "k2".to_string()),
        ("oauth_signature_method", "HMAC-SHA1".to_string()),
        ("oauth_timestamp", "1000".to_string()),
        ("oauth_nonce", nonce.to_string()),
        ("oauth_version", "1.0".to_string()),
    ]
}

const WIKI: &str = "https://wiki.example.com";

fn hmac_policy() -> Policy {
    policy(serde_json::json!({
        "public_base_url": WIKI,
        "realm": "wiki",
        "signature_methods": ["RSA-SHA1", "HMAC-SHA1"],
        "consumers": [
            {"key": "jira", "rsa_public_key": RSA_PUBLIC_PEM},
            {"key": "k2", "secret": "shared-consumer-secret", "token_secrets": {"tok": "tok-secret"}}
        ]
    }))
}

/// An HMAC-SHA1 request of consumer `k2`, signed.
fn k2_request(
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&str>,
    token: Option<(&str, &str)>,
) -> Request {
    let mut params = k2_params("n-1");
    if let Some((t, _)) = token {
        params.push(("oauth_token", t.to_string()));
    }
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let auth = oauth_header(Some("wiki"), &params);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let req = request(method, path, &headers, body);
    sign_hmac(
        req,
        WIKI,
        Method::HmacSha1,
        "shared-consumer-secret",
        token.map_or("", |(_, s)| s),
    )
}

/// Like [`k2_request`] but with a made-up signature, for requests that
/// fail before verification (and that the signing helper could not sign).
fn k2_unsigned(path: &str, extra: &[(&str, &str)], body: Option<&str>) -> Request {
    let mut params = k2_params("n-1");
    params.push(("oauth_signature", "c2ln".to_string()));
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let auth = oauth_header(None, &params);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    request("POST", path, &headers, body)
}

fn refusal(policy: &Policy, req: &Request, now: u64) -> Refusal {
    match policy.evaluate(req, &mut FakeHost::at(now)) {
        Ok(v) => panic!("allowed: {v:?}"),
        Err(r) => r,
    }
}

fn assert_refused(
    policy: &Policy,
    req: &Request,
    now: u64,
    status: u16,
    problem: Problem,
) -> Refusal {
    let r = refusal(policy, req, now);
    assert_eq!((r.status, r.problem), (status, problem), "{}", r.reason);
    r
}

fn allowed(policy: &Policy, req: &Request, now: u64) -> Verdict {
    match policy.evaluate(req, &mut FakeHost::at(now)) {
        Ok(v) => v,
        Err(r) => panic!("refused: {r:?}"),
    }
}

fn verified(consumer: &str) -> Verdict {
    Verdict::Verified {
        consumer: consumer.to_string(),
    }
}

// ----------------------------------------------------- published vectors

#[test]
fn vector_percent_encoding_table() {
    let table: [(&str, &str); 10] = [
        ("abcABC123", "abcABC123"),
        ("-._~", "-._~"),
        ("%", "%25"),
        ("+", "%2B"),
        ("&=*", "%26%3D%2A"),
        ("\u{000A}", "%0A"),
        ("\u{0020}", "%20"),
        ("\u{007F}", "%7F"),
        ("\u{0080}", "%C2%80"),
        ("\u{3001}", "%E3%80%81"),
    ];
    for (input, encoded) in table {
        assert_eq!(encode(input.as_bytes()), encoded, "{input:?}");
    }
}

#[test]
fn vector_parameter_normalization_table() {
    let table = [
        ("name", "name="),
        ("a=b", "a=b"),
        ("a=b&c=d", "a=b&c=d"),
        ("a=x!y&a=x+y", "a=x%20y&a=x%21y"),
        ("x!y=a&x=a", "x=a&x%21y=a"),
    ];
    for (params, normalized) in table {
        let parsed = parse_form(params.as_bytes(), "test");
        assert!(parsed.problem.is_none());
        assert_eq!(
            normalized_parameters(&parsed.params),
            normalized,
            "{params}"
        );
    }
}

#[test]
fn vector_base_string_uri() {
    // The published one: GET http://example.com with n=v.
    let origin = parse_origin("http://example.com").unwrap().origin;
    let uri = base_string_uri(&origin, "?n=v");
    assert_eq!(
        base_string("GET", &uri, "n=v"),
        "GET&http%3A%2F%2Fexample.com%2F&n%3Dv"
    );
    // And through the request path the plugin uses.
    let req = request(
        "GET",
        "?n=v",
        &[("authorization", "OAuth oauth_nonce=\"x\"")],
        None,
    );
    let base = signature_base_string(&origin, &req).unwrap().unwrap();
    assert_eq!(
        base,
        "GET&http%3A%2F%2Fexample.com%2F&n%3Dv%26oauth_nonce%3Dx"
    );

    // Lower-case scheme and host; drop :80 for http and :443 for https only.
    let uri = |base: &str, path: &str| base_string_uri(&parse_origin(base).unwrap().origin, path);
    assert_eq!(uri("HTTP://EXAMPLE.com:80", "/r"), "http://example.com/r");
    assert_eq!(
        uri("https://Example.com:443", "/r"),
        "https://example.com/r"
    );
    assert_eq!(
        uri("http://example.com:443", "/r"),
        "http://example.com:443/r"
    );
    assert_eq!(
        uri("https://example.com:80", "/r"),
        "https://example.com:80/r"
    );
    assert_eq!(
        uri("http://example.com:8080", "/r"),
        "http://example.com:8080/r"
    );
    // Empty path is `/`; query and fragment are dropped; the path is kept as sent.
    assert_eq!(uri("http://example.com", ""), "http://example.com/");
    assert_eq!(
        uri("http://example.com", "/a%2Fb/C?x=1#f"),
        "http://example.com/a%2Fb/C"
    );
}

#[test]
fn vector_rfc_3_4_1_base_string_with_query_form_and_header() {
    let auth = "OAuth realm=\"Example\", oauth_consumer_key=\"9djdj82h48djs9d2\", \
                oauth_token=\"kkk9d7dh3k39sjv7\", oauth_signature_method=\"HMAC-SHA1\", \
                oauth_timestamp=\"137131201\", oauth_nonce=\"7d8f3e4a\", \
                oauth_signature=\"bYT5CMsGcbgUdFHObYMEfcx6bsw%3D\"";
    let body = "c2&a3=2+q";
    let req = request(
        "POST",
        "/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
        &[
            ("host", "example.com"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "9"),
            ("authorization", auth),
        ],
        Some(body),
    );
    let normalized = "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2&oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201&oauth_token=kkk9d7dh3k39sjv7";
    let expected = "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7";
    assert_eq!(
        base_string("POST", "http://example.com/request", normalized),
        expected
    );
    assert_eq!(
        signature_base_string("http://example.com", &req)
            .unwrap()
            .unwrap(),
        expected
    );
}

#[test]
fn vector_rfc_1_2_hmac_sha1_request() {
    let signature = "MdpQcU8iPSUjWoN/UDMsK2sui9I=";
    let req = rfc_1_2_request(signature);
    assert_eq!(
        signature_base_string("http://photos.example.net", &req)
            .unwrap()
            .unwrap(),
        RFC_1_2_BASE
    );
    let key = hmac_key("kd94hf93k423kf44", "pfkkdhi9sl3r4s00");
    let sig = hmac_sign(Method::HmacSha1, key.as_bytes(), RFC_1_2_BASE.as_bytes()).unwrap();
    assert_eq!(encode_signature(&sig), signature);
    // In the header it travels encoded.
    assert_eq!(
        encode(signature.as_bytes()),
        "MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D"
    );
    assert!(oauth_header(None, &[("oauth_signature", signature)])
        .contains("MdpQcU8iPSUjWoN%2FUDMsK2sui9I%3D"));

    let policy = photos_hmac_policy();
    let mut host = FakeHost::at(RFC_1_2_TIME);
    assert_eq!(
        policy.evaluate(&req, &mut host),
        Ok(verified("dpf43f3p2l4k3l03"))
    );
    assert!(
        matches!(policy.decide(&req, &mut FakeHost::at(RFC_1_2_TIME)), Decision::Allow(e) if e.is_empty())
    );
}

#[test]
fn vector_hmac_sha1_table() {
    let rows = [
        ("cs", "", "bs", "egQqG5AJep5sJ7anhXju1unge2I="),
        ("cs", "ts", "bs", "VZVjXceV7JgPq/dOTnNmEfO0Fv8="),
        (
            "kd94hf93k423kf44",
            "pfkkdhi9sl3r4s00",
            HMAC_TABLE_BASE,
            "tR3+Ty81lMeYAr/Fid0kMTYa/WM=",
        ),
    ];
    for (cs, ts, base, signature) in rows {
        let key = hmac_key(cs, ts);
        let sig = hmac_sign(Method::HmacSha1, key.as_bytes(), base.as_bytes()).unwrap();
        assert_eq!(encode_signature(&sig), signature, "{cs}/{ts}");
        assert!(hmac_verify(
            Method::HmacSha1,
            key.as_bytes(),
            base.as_bytes(),
            &decode_signature(signature).unwrap()
        ));
    }
    assert_eq!(hmac_key("cs", ""), "cs&");
}

#[test]
fn vector_hmac_sha1_table_third_row_as_a_request() {
    let auth = oauth_header(
        None,
        &[
            ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
            ("oauth_token", "nnch734d00sl2jdk"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_signature", "tR3+Ty81lMeYAr/Fid0kMTYa/WM="),
            ("oauth_timestamp", "1191242096"),
            ("oauth_nonce", "kllo9940pd9333jh"),
            ("oauth_version", "1.0"),
        ],
    );
    let req = request(
        "GET",
        "/photos?file=vacation.jpg&size=original",
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(
        signature_base_string("http://photos.example.net", &req)
            .unwrap()
            .unwrap(),
        HMAC_TABLE_BASE
    );
    assert_eq!(
        allowed(&photos_hmac_policy(), &req, 1_191_242_096),
        verified("dpf43f3p2l4k3l03")
    );
}

#[test]
fn hmac_sha256_when_listed() {
    // Computed independently (Python's hmac/hashlib) for the `cs`/`bs` rows.
    for (ts, expected) in [
        ("ts", "9HGKdfyP38c9+AtaEhdNhLubhigOrxSw0l46B8qgPso="),
        ("", "kWNIhpsQfKsXX+tw7xo2n09Z77xczTK6fc8ZPau76DY="),
    ] {
        let sig = hmac_sign(Method::HmacSha256, hmac_key("cs", ts).as_bytes(), b"bs").unwrap();
        assert_eq!(encode_signature(&sig), expected);
    }

    let config = |methods: serde_json::Value| {
        policy(serde_json::json!({
            "public_base_url": WIKI,
            "signature_methods": methods,
            "consumers": [{"key": "k2", "secret": "shared-consumer-secret"}]
        }))
    };
    let mut params = k2_params("n-256");
    params[1].1 = "HMAC-SHA256".to_string();
    let params: Vec<(&str, &str)> = params.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let req = request(
        "GET",
        "/x",
        &[("authorization", &oauth_header(None, &params))],
        None,
    );
    let req = sign_hmac(req, WIKI, Method::HmacSha256, "shared-consumer-secret", "");
    assert_eq!(
        allowed(&config(serde_json::json!(["HMAC-SHA256"])), &req, 1000),
        verified("k2")
    );
    // Not in the default list.
    assert_refused(
        &config(serde_json::json!(["RSA-SHA1", "HMAC-SHA1"])),
        &req,
        1000,
        400,
        Problem::SignatureMethodRejected,
    );
}

#[test]
fn vector_rsa_sha1_verifies_with_the_public_key() {
    let signature = decode_signature(RSA_VECTOR_SIGNATURE).unwrap();
    for pem in [RSA_PUBLIC_PEM, RSA_PUBLIC_PKCS1_PEM] {
        let key = parse_rsa_public_key(pem).unwrap();
        assert!(rsa_verify(&key, RSA_VECTOR_BASE.as_bytes(), &signature));
        assert!(!rsa_verify(
            &key,
            RSA_VECTOR_BASE.replace("original", "large").as_bytes(),
            &signature
        ));
    }
    // The bare base64 form Atlassian shows, and a PEM on one line.
    let bare: String = RSA_PUBLIC_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let one_line = format!("-----BEGIN PUBLIC KEY-----{bare}-----END PUBLIC KEY-----");
    for text in [
        bare.as_str(),
        one_line.as_str(),
        &RSA_PUBLIC_PEM.replace('\n', "\r\n"),
    ] {
        let key = parse_rsa_public_key(text).unwrap();
        assert!(rsa_verify(&key, RSA_VECTOR_BASE.as_bytes(), &signature));
    }
    let other = parse_rsa_public_key(OTHER_RSA_PUBLIC_PEM).unwrap();
    assert!(!rsa_verify(&other, RSA_VECTOR_BASE.as_bytes(), &signature));
}

#[test]
fn vector_rsa_sha1_as_a_request() {
    let req = rsa_vector_request("/photos?file=vacaction.jpg&size=original");
    assert_eq!(
        signature_base_string("http://photos.example.net", &req)
            .unwrap()
            .unwrap(),
        RSA_VECTOR_BASE
    );
    assert_eq!(
        allowed(&photos_rsa_policy(), &req, RSA_VECTOR_TIME),
        verified("dpf43f3p2l4k3l03")
    );
    // The PKCS#1 form of the key works the same.
    assert_eq!(
        allowed(
            &photos_rsa_policy_with(RSA_PUBLIC_PKCS1_PEM),
            &req,
            RSA_VECTOR_TIME
        ),
        verified("dpf43f3p2l4k3l03")
    );
}

#[test]
fn rsa_signed_form_post_is_allowed() {
    // Application links sign POSTs too; sign one with the vector's key.
    let auth = oauth_header(
        None,
        &[
            ("oauth_consumer_key", "jira"),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", "1000"),
            ("oauth_nonce", "rsa-post"),
            ("oauth_token", "access-token"),
        ],
    );
    let body = "title=Caf%C3%A9+menu&space=TEAM";
    let req = request(
        "POST",
        "/rest/api/content?expand=body",
        &[
            ("authorization", &auth),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
            ("content-length", &body.len().to_string()),
        ],
        Some(body),
    );
    let req = sign_rsa(req, WIKI);
    assert_eq!(allowed(&hmac_policy(), &req, 1000), verified("jira"));
}

// ------------------------------------------------------------ negatives

#[test]
fn wrong_hmac_secret_is_signature_invalid() {
    let req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    let wrong = policy(serde_json::json!({
        "public_base_url": "http://photos.example.net",
        "consumers": [{
            "key": "dpf43f3p2l4k3l03",
            "secret": "kd94hf93k423kf45",
            "token_secrets": {"nnch734d00sl2jdk": "pfkkdhi9sl3r4s00"}
        }]
    }));
    assert_refused(&wrong, &req, RFC_1_2_TIME, 401, Problem::SignatureInvalid);
    // Wrong token secret.
    let wrong = policy(serde_json::json!({
        "public_base_url": "http://photos.example.net",
        "consumers": [{
            "key": "dpf43f3p2l4k3l03",
            "secret": "kd94hf93k423kf44",
            "token_secrets": {"nnch734d00sl2jdk": "other"}
        }]
    }));
    assert_refused(&wrong, &req, RFC_1_2_TIME, 401, Problem::SignatureInvalid);
}

#[test]
fn wrong_rsa_key_is_signature_invalid() {
    let req = rsa_vector_request("/photos?file=vacaction.jpg&size=original");
    let wrong = photos_rsa_policy_with(OTHER_RSA_PUBLIC_PEM);
    assert_refused(
        &wrong,
        &req,
        RSA_VECTOR_TIME,
        401,
        Problem::SignatureInvalid,
    );
}

#[test]
fn wrong_public_base_url_is_signature_invalid() {
    let req = rsa_vector_request("/photos?file=vacaction.jpg&size=original");
    let other_host = policy(serde_json::json!({
        "public_base_url": "https://photos.example.net",
        "consumers": [{"key": "dpf43f3p2l4k3l03", "rsa_public_key": RSA_PUBLIC_PEM}]
    }));
    assert_refused(
        &other_host,
        &req,
        RSA_VECTOR_TIME,
        401,
        Problem::SignatureInvalid,
    );
}

#[test]
fn altered_path_is_signature_invalid() {
    let p = photos_rsa_policy();
    for path in [
        "/photos2?file=vacaction.jpg&size=original",
        "/Photos?file=vacaction.jpg&size=original",
        "/photos/?file=vacaction.jpg&size=original",
        "/%70hotos?file=vacaction.jpg&size=original",
    ] {
        assert_refused(
            &p,
            &rsa_vector_request(path),
            RSA_VECTOR_TIME,
            401,
            Problem::SignatureInvalid,
        );
    }
    let p = photos_hmac_policy();
    let mut req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    req.path_with_query = "/albums?file=vacation.jpg&size=original".into();
    assert_refused(&p, &req, RFC_1_2_TIME, 401, Problem::SignatureInvalid);
}

#[test]
fn altered_query_parameter_is_signature_invalid() {
    let p = photos_rsa_policy();
    for path in [
        "/photos?file=vacaction.jpg&size=large",
        "/photos?file=vacaction.jpg&size=original&extra=1",
        "/photos?file=vacaction.jpg",
        "/photos?file=vacaction.jpg&size=original&size=original",
    ] {
        assert_refused(
            &p,
            &rsa_vector_request(path),
            RSA_VECTOR_TIME,
            401,
            Problem::SignatureInvalid,
        );
    }
    let mut req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    req.path_with_query = "/photos?file=vacation.png&size=original".into();
    assert_refused(
        &photos_hmac_policy(),
        &req,
        RFC_1_2_TIME,
        401,
        Problem::SignatureInvalid,
    );
}

#[test]
fn altered_form_parameter_is_signature_invalid() {
    let p = hmac_policy();
    let body = "amount=10&to=alice";
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", "18"),
    ];
    let req = k2_request("POST", "/pay", &headers, Some(body), None);
    assert_eq!(allowed(&p, &req, 1000), verified("k2"));

    let mut altered = req.clone();
    altered.body_prefix = Some(b"amount=99&to=alice".to_vec());
    assert_refused(&p, &altered, 1000, 401, Problem::SignatureInvalid);
    // Dropping a body parameter.
    let mut dropped = req.clone();
    dropped.body_prefix = Some(b"amount=10".to_vec());
    dropped.headers[2].value = b"9".to_vec();
    assert_refused(&p, &dropped, 1000, 401, Problem::SignatureInvalid);
    // The same body without the form content type is not signed content.
    let mut not_form = req.clone();
    not_form.headers[1].value = b"text/plain".to_vec();
    assert_refused(&p, &not_form, 1000, 401, Problem::SignatureInvalid);
}

#[test]
fn stale_timestamp_in_both_directions() {
    let p = photos_hmac_policy();
    let req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    // Exactly at the window's edges is accepted.
    assert!(p
        .evaluate(&req, &mut FakeHost::at(RFC_1_2_TIME + 600))
        .is_ok());
    assert!(p
        .evaluate(&req, &mut FakeHost::at(RFC_1_2_TIME - 600))
        .is_ok());
    // One second past it is not, whichever side.
    let r = assert_refused(&p, &req, RFC_1_2_TIME + 601, 401, Problem::TimestampRefused);
    assert!(r.reason.contains("behind"), "{}", r.reason);
    let r = assert_refused(&p, &req, RFC_1_2_TIME - 601, 401, Problem::TimestampRefused);
    assert!(r.reason.contains("ahead"), "{}", r.reason);
    assert_refused(&p, &req, 0, 401, Problem::TimestampRefused);
    assert_refused(&p, &req, u64::MAX, 401, Problem::TimestampRefused);
}

#[test]
fn configured_window_applies() {
    let p = policy(serde_json::json!({"timestamp_window_secs": 30}));
    let req = k2_request("GET", "/", &[], None, None);
    assert!(p.evaluate(&req, &mut FakeHost::at(1030)).is_ok());
    assert_refused(&p, &req, 1031, 401, Problem::TimestampRefused);
    let mut host = FakeHost::at(1000);
    p.evaluate(&req, &mut host).unwrap();
    assert_eq!(
        host.inserts[0].1, 60,
        "nonces are kept for twice the window"
    );
}

#[test]
fn malformed_timestamp_is_rejected() {
    let p = policy(serde_json::json!({}));
    for ts in [
        "-1000",
        "+1000",
        "1e3",
        "10.0",
        " 1000",
        "99999999999999999999",
    ] {
        let auth = oauth_header(
            None,
            &[
                ("oauth_consumer_key", "k"),
                ("oauth_signature_method", "HMAC-SHA1"),
                ("oauth_signature", "c2ln"),
                ("oauth_timestamp", ts),
                ("oauth_nonce", "n"),
            ],
        );
        let req = request("GET", "/", &[("authorization", &auth)], None);
        assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    }
}

#[test]
fn replayed_nonce_is_refused() {
    let p = photos_hmac_policy();
    let req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    let mut host = FakeHost::at(RFC_1_2_TIME);
    assert!(p.evaluate(&req, &mut host).is_ok());
    let r = p.evaluate(&req, &mut host).unwrap_err();
    assert_eq!((r.status, r.problem), (401, Problem::NonceUsed));
    assert!(r.reason.contains("nonce already used"));
    assert_eq!(
        host.inserts[0],
        (
            nonce_key(
                "dpf43f3p2l4k3l03",
                "nnch734d00sl2jdk",
                RFC_1_2_TIME,
                "chapoH"
            ),
            1200
        )
    );
    // The response.
    match p.decide(&req, &mut host) {
        Decision::Deny(d) => assert_eq!(d.body, b"oauth_problem=nonce_used\n"),
        Decision::Allow(_) => panic!("replay allowed"),
    }
}

#[test]
fn a_refused_request_does_not_use_up_its_nonce() {
    let p = photos_hmac_policy();
    let mut host = FakeHost::at(RFC_1_2_TIME);
    let forged = rfc_1_2_request("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert_eq!(
        p.evaluate(&forged, &mut host).unwrap_err().problem,
        Problem::SignatureInvalid
    );
    assert!(host.inserts.is_empty());
    let genuine = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    assert!(p.evaluate(&genuine, &mut host).is_ok());
}

#[test]
fn full_nonce_store_fails_closed() {
    struct Full;
    impl Host for Full {
        fn now(&self) -> u64 {
            RFC_1_2_TIME
        }
        fn insert_if_absent(&mut self, _: &str, _: u32) -> bool {
            false
        }
    }
    let req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    let r = photos_hmac_policy().evaluate(&req, &mut Full).unwrap_err();
    assert_eq!((r.status, r.problem), (401, Problem::NonceUsed));
}

#[test]
fn nonce_keys_are_unambiguous() {
    assert_ne!(nonce_key("a|1", "b", 1, "n"), nonce_key("a", "1|b", 1, "n"));
    assert_ne!(nonce_key("a", "b", 12, "3"), nonce_key("a", "b", 1, "23"));
    assert_ne!(nonce_key("ab", "", 1, "n"), nonce_key("a", "b", 1, "n"));
    let key = nonce_key("a", "", 1, "n");
    assert_eq!(key.len(), 64, "a fixed-length hex digest: {key}");
    assert_eq!(key, nonce_key("a", "", 1, "n"));
    assert_eq!(nonce_key(&"c".repeat(1024), "", 1, "n").len(), 64);
}

#[test]
fn malformed_headers_are_400() {
    let p = photos_hmac_policy();
    for header in [
        "OAuth oauth_consumer_key=\"dpf43f3p2l4k3l03, oauth_nonce=\"x\"",
        "OAuth oauth_consumer_key=\"dpf43f3p2l4k3l03",
        "OAuth oauth_nonce=\"a\", oauth_nonce=\"b\"",
        "OAuth realm=\"a\", realm=\"b\", oauth_nonce=\"b\"",
        "OAuth oauth_nonce=\"%zz\"",
        "OAuth oauth_nonce=\"abc%4\"",
        "OAuth oauth_nonce=abc",
        "OAuth oauth_nonce=\"a\" oauth_token=\"b\"",
    ] {
        let req = request("GET", "/photos", &[("authorization", header)], None);
        let r = assert_refused(&p, &req, RFC_1_2_TIME, 400, Problem::ParameterRejected);
        assert!(
            r.reason.starts_with("malformed OAuth Authorization header"),
            "{}",
            r.reason
        );
    }
}

#[test]
fn missing_required_parameters_are_400() {
    let p = photos_hmac_policy();
    let all = [
        ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_signature", "MdpQcU8iPSUjWoN/UDMsK2sui9I="),
        ("oauth_timestamp", "137131202"),
        ("oauth_nonce", "chapoH"),
    ];
    for skip in 0..all.len() {
        let name = all[skip].0;
        // Left out, or present but empty: both are absent.
        let without: Vec<(&str, &str)> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, p)| *p)
            .collect();
        let mut emptied = all;
        emptied[skip].1 = "";
        for params in [without, emptied.to_vec()] {
            let req = request(
                "GET",
                "/photos",
                &[("authorization", &oauth_header(None, &params))],
                None,
            );
            let r = assert_refused(&p, &req, RFC_1_2_TIME, 400, Problem::ParameterAbsent);
            assert!(r.reason.contains(name), "{}", r.reason);
        }
    }
    // Only a realm: OAuth, but nothing to check.
    let req = request(
        "GET",
        "/photos",
        &[("authorization", "OAuth realm=\"Photos\"")],
        None,
    );
    let r = assert_refused(&p, &req, RFC_1_2_TIME, 400, Problem::ParameterAbsent);
    assert!(r.reason.contains(
        "oauth_consumer_key, oauth_signature_method, oauth_signature, oauth_timestamp, oauth_nonce"
    ));
}

#[test]
fn unsupported_signature_methods_are_400() {
    let p = photos_hmac_policy();
    for method in ["PLAINTEXT", "HMAC-SHA256", "hmac-sha1", "RSA-SHA256", ""] {
        let auth = oauth_header(
            None,
            &[
                ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
                ("oauth_signature_method", method),
                ("oauth_signature", "c2ln"),
                ("oauth_timestamp", "137131202"),
                ("oauth_nonce", "n"),
            ],
        );
        let req = request("GET", "/photos", &[("authorization", &auth)], None);
        let problem = if method.is_empty() {
            Problem::ParameterAbsent
        } else {
            Problem::SignatureMethodRejected
        };
        assert_refused(&p, &req, RFC_1_2_TIME, 400, problem);
    }
    // An allowed list without RSA refuses the RSA vector.
    let hmac_only = policy(serde_json::json!({
        "signature_methods": ["HMAC-SHA1"],
        "public_base_url": "http://photos.example.net",
        "consumers": [{"key": "dpf43f3p2l4k3l03", "rsa_public_key": RSA_PUBLIC_PEM}]
    }));
    let req = rsa_vector_request("/photos?file=vacaction.jpg&size=original");
    let r = assert_refused(
        &hmac_only,
        &req,
        RSA_VECTOR_TIME,
        400,
        Problem::SignatureMethodRejected,
    );
    assert!(r.reason.contains("allowed: HMAC-SHA1"));
}

#[test]
fn oauth_version_must_be_1_0() {
    let p = photos_rsa_policy();
    for version in ["2.0", "1.0a", "1", ""] {
        let auth = oauth_header(
            None,
            &[
                ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
                ("oauth_nonce", "13917289812797014437"),
                ("oauth_signature_method", "RSA-SHA1"),
                ("oauth_timestamp", "1196666512"),
                ("oauth_version", version),
                ("oauth_signature", RSA_VECTOR_SIGNATURE),
            ],
        );
        let req = request(
            "GET",
            "/photos?file=vacaction.jpg&size=original",
            &[("authorization", &auth)],
            None,
        );
        let r = assert_refused(&p, &req, RSA_VECTOR_TIME, 400, Problem::VersionRejected);
        match p.decide(&req, &mut FakeHost::at(RSA_VECTOR_TIME)) {
            Decision::Deny(d) => assert_eq!(d.body, b"oauth_problem=version_rejected\n"),
            Decision::Allow(_) => panic!("{r:?}"),
        }
    }
}

#[test]
fn unknown_consumer_reads_like_a_bad_signature() {
    let p = hmac_policy();
    // RSA with a consumer key nobody has.
    let auth = oauth_header(
        None,
        &[
            ("oauth_consumer_key", "stranger"),
            ("oauth_nonce", "13917289812797014437"),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", "1000"),
            ("oauth_signature", RSA_VECTOR_SIGNATURE),
        ],
    );
    let unknown = request("GET", "/", &[("authorization", &auth)], None);
    let r = assert_refused(&p, &unknown, 1000, 401, Problem::ConsumerKeyUnknown);
    assert!(r.reason.contains("not configured"), "{}", r.reason);
    // The same request for the known RSA consumer: a bad signature.
    let known = request(
        "GET",
        "/",
        &[("authorization", &auth.replace("stranger", "jira"))],
        None,
    );
    assert_refused(&p, &known, 1000, 401, Problem::SignatureInvalid);

    let deny = |req: &Request| match p.decide(req, &mut FakeHost::at(1000)) {
        Decision::Deny(d) => d,
        Decision::Allow(_) => panic!("allowed"),
    };
    let (a, b) = (deny(&unknown), deny(&known));
    let headers = |d: &crate::Denial| -> Vec<(String, Vec<u8>)> {
        d.headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect()
    };
    assert_eq!(
        (a.status, headers(&a), &a.body),
        (b.status, headers(&b), &b.body)
    );
    assert_eq!(a.body, b"oauth_problem=signature_invalid\n");

    // HMAC with an unknown consumer, and the HMAC consumer claiming RSA.
    let mut req = k2_request("GET", "/", &[], None, None);
    let h = &mut req.headers[0].value;
    *h = String::from_utf8(h.clone())
        .unwrap()
        .replace("\"k2\"", "\"k3\"")
        .into_bytes();
    assert_refused(&p, &req, 1000, 401, Problem::ConsumerKeyUnknown);
    let known_hmac_as_rsa = request(
        "GET",
        "/",
        &[("authorization", &auth.replace("stranger", "k2"))],
        None,
    );
    assert_refused(
        &p,
        &known_hmac_as_rsa,
        1000,
        401,
        Problem::ConsumerKeyUnknown,
    );
}

#[test]
fn unknown_consumer_is_checked_against_a_stand_in_of_the_same_size() {
    let config = crate::config::Config::parse(
        &serde_json::json!({
            "public_base_url": WIKI,
            "consumers": [
                {"key": "a", "rsa_public_key": OTHER_RSA_PUBLIC_PEM},
                {"key": "b", "secret": "s%cret"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let v = config.verifier.unwrap();
    // 128-byte signatures meet a 128-byte modulus, not a length mismatch.
    use rsa::traits::PublicKeyParts;
    assert_eq!(v.rsa_key_for_signature(128).unwrap().size(), 128);
    assert!(v.rsa_key_for_signature(3).is_some());
    assert_eq!(v.dummy_secret.len(), encode(b"s%cret").len());
}

#[test]
fn unknown_token_is_token_rejected() {
    let p = hmac_policy();
    let req = k2_request("GET", "/", &[], None, Some(("tok", "tok-secret")));
    assert_eq!(allowed(&p, &req, 1000), verified("k2"));
    let req = k2_request("GET", "/", &[], None, Some(("other", "tok-secret")));
    let r = assert_refused(&p, &req, 1000, 401, Problem::TokenRejected);
    assert!(!r.reason.contains("other"), "tokens stay out of the logs");
    // An unknown consumer naming a token gets the very same answer.
    let mut req = k2_request("GET", "/", &[], None, Some(("tok", "tok-secret")));
    let h = &mut req.headers[0].value;
    *h = String::from_utf8(h.clone())
        .unwrap()
        .replace("\"k2\"", "\"k9\"")
        .into_bytes();
    assert_refused(&p, &req, 1000, 401, Problem::TokenRejected);
}

#[test]
fn bad_base64_signature_is_signature_invalid() {
    let p = photos_hmac_policy();
    assert_refused(
        &p,
        &rfc_1_2_request("not base64!"),
        RFC_1_2_TIME,
        401,
        Problem::SignatureInvalid,
    );
    // Padding is optional.
    assert!(p
        .evaluate(
            &rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I"),
            &mut FakeHost::at(RFC_1_2_TIME)
        )
        .is_ok());
}

#[test]
fn unsigned_requests() {
    let plain = request(
        "GET",
        "/wiki?page=Home",
        &[("authorization", "Bearer abc")],
        None,
    );
    // Default: refused with a challenge.
    let p = policy(serde_json::json!({"public_base_url": WIKI}));
    let r = assert_refused(&p, &plain, 1000, 401, Problem::ParameterAbsent);
    assert!(r.reason.contains("no OAuth parameters"));
    match p.decide(&plain, &mut FakeHost::at(1000)) {
        Decision::Deny(d) => {
            assert_eq!(d.body, b"oauth_problem=parameter_absent\n");
            assert!(d
                .headers
                .iter()
                .any(|h| h.name == "www-authenticate"
                    && h.value == b"OAuth realm=\"wiki.example.com\""));
        }
        Decision::Allow(_) => panic!("unsigned allowed"),
    }
    // allow_unsigned: through, untouched, nonce store untouched.
    let p = policy(serde_json::json!({"allow_unsigned": true}));
    let mut host = FakeHost::at(1000);
    assert_eq!(p.evaluate(&plain, &mut host), Ok(Verdict::Unsigned));
    assert!(host.inserts.is_empty());
    assert!(matches!(p.decide(&plain, &mut host), Decision::Allow(e) if e.is_empty()));
    // A broken query without OAuth parameters is not this plugin's business...
    let odd = request("GET", "/wiki?q=100%", &[], None);
    assert_eq!(p.evaluate(&odd, &mut host), Ok(Verdict::Unsigned));
    // ...but one that hides an oauth_ name is.
    let hiding = request("GET", "/wiki?oauth_nonce=%zz", &[], None);
    assert_refused(&p, &hiding, 1000, 400, Problem::ParameterRejected);
    // allow_unsigned does not let a signed request skip its checks.
    let signed = request("GET", "/wiki?oauth_consumer_key=k", &[], None);
    assert_refused(&p, &signed, 1000, 400, Problem::ParameterAbsent);
}

#[test]
fn form_body_must_be_seen_in_full() {
    let p = hmac_policy();
    let body = "amount=10&to=alice";
    for (headers, prefix) in [
        // The route did not pass the body.
        (
            vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "18"),
            ],
            None,
        ),
        // Only a prefix of it.
        (
            vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "40"),
            ],
            Some(body),
        ),
        // No Content-Length (chunked).
        (
            vec![
                ("content-type", "application/x-www-form-urlencoded"),
                ("transfer-encoding", "chunked"),
            ],
            Some(body),
        ),
    ] {
        let req = k2_request("POST", "/pay", &[], None, None);
        let mut req = Request {
            body_prefix: prefix.map(|b| b.as_bytes().to_vec()),
            ..req
        };
        req.headers.extend(headers.iter().map(|(n, v)| Header {
            name: n.to_string(),
            value: v.as_bytes().to_vec(),
        }));
        let r = assert_refused(&p, &req, 1000, 401, Problem::ParameterRejected);
        assert!(
            r.reason.starts_with("form body not available to verify"),
            "{}",
            r.reason
        );
    }
    // Not needed when nothing is signed.
    let unsigned = request(
        "POST",
        "/pay",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "18"),
        ],
        None,
    );
    let open = policy(serde_json::json!({"allow_unsigned": true}));
    assert_eq!(
        open.evaluate(&unsigned, &mut FakeHost::at(1000)),
        Ok(Verdict::Unsigned)
    );
    let r = assert_refused(&p, &unsigned, 1000, 401, Problem::ParameterAbsent);
    assert!(r.reason.contains("form body"), "{}", r.reason);
    // An empty body is known without being passed.
    let empty = k2_request(
        "POST",
        "/pay",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", "0"),
        ],
        None,
        None,
    );
    assert_eq!(allowed(&p, &empty, 1000), verified("k2"));
}

#[test]
fn oauth_parameters_in_the_form_body_alone() {
    let p = policy(serde_json::json!({
        "public_base_url": WIKI,
        "consumers": [{"key": "k2", "secret": "shared-consumer-secret"}]
    }));
    let unsigned_body = "oauth_consumer_key=k2&oauth_signature_method=HMAC-SHA1&oauth_timestamp=1000&oauth_nonce=b&x=1";
    let req = request(
        "POST",
        "/f",
        &[("content-type", "application/x-www-form-urlencoded")],
        None,
    );
    let base = {
        let mut r = req.clone();
        r.body_prefix = Some(unsigned_body.as_bytes().to_vec());
        r.headers.push(Header {
            name: "content-length".into(),
            value: unsigned_body.len().to_string().into_bytes(),
        });
        signature_base_string(WIKI, &r).unwrap().unwrap()
    };
    let sig = hmac_sign(
        Method::HmacSha1,
        hmac_key("shared-consumer-secret", "").as_bytes(),
        base.as_bytes(),
    )
    .unwrap();
    let body = format!(
        "{unsigned_body}&oauth_signature={}",
        encode(encode_signature(&sig).as_bytes())
    );
    let mut req = req;
    req.headers.push(Header {
        name: "content-length".into(),
        value: body.len().to_string().into_bytes(),
    });
    req.body_prefix = Some(body.into_bytes());
    assert_eq!(allowed(&p, &req, 1000), verified("k2"));
}

#[test]
fn duplicate_protocol_parameters_are_400() {
    let p = hmac_policy();
    // In the query as well as the header.
    let mut req = k2_request("GET", "/", &[], None, None);
    req.path_with_query = "/?oauth_nonce=n-1".into();
    let r = assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    assert!(r.reason.contains("appears more than once"), "{}", r.reason);
    // Twice in the query.
    let req = request("GET", "/?oauth_nonce=a&oauth_nonce=a", &[], None);
    assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    // Two OAuth Authorization headers.
    let auth = oauth_header(None, &[("oauth_nonce", "a")]);
    let req = request(
        "GET",
        "/",
        &[("authorization", &auth), ("Authorization", &auth)],
        None,
    );
    assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    // Non-protocol parameters may repeat (a=1&a=2 is ordinary).
    let req = k2_request("GET", "/?a=1&a=2&a=1", &[], None, None);
    assert_eq!(allowed(&p, &req, 1000), verified("k2"));
}

#[test]
fn size_limits_are_400() {
    let p = hmac_policy();
    // Authorization over 8 KiB.
    let big = format!("OAuth oauth_nonce=\"n\"{}", ", a=\"b\"".repeat(1200));
    let req = request("GET", "/", &[("authorization", &big)], None);
    let r = assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    assert!(r.reason.contains("8192"), "{}", r.reason);
    // Over 100 parameters in all.
    let query: Vec<String> = (0..100).map(|i| format!("p{i}=v")).collect();
    let req = k2_unsigned(&format!("/?{}", query.join("&")), &[], None);
    let r = assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    assert!(r.reason.contains("over the limit of 100"), "{}", r.reason);
    // A parameter over 1 KiB: in the query, in the header.
    let req = k2_unsigned(&format!("/?q={}", "x".repeat(1024)), &[], None);
    assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    let long = "n".repeat(1100);
    let req = request(
        "GET",
        "/",
        &[(
            "authorization",
            &oauth_header(None, &[("oauth_nonce", &long)]),
        )],
        None,
    );
    assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
}

#[test]
fn bad_percent_encoding_in_query_or_body_is_400_when_signed() {
    let p = hmac_policy();
    let req = k2_unsigned("/?q=%E", &[], None);
    let r = assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    assert!(
        r.reason
            .contains("query string is not valid percent-encoding"),
        "{}",
        r.reason
    );
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", "4"),
    ];
    let req = k2_unsigned("/", &form, Some("a=%G"));
    let r = assert_refused(&p, &req, 1000, 400, Problem::ParameterRejected);
    assert!(
        r.reason.contains("form body is not valid percent-encoding"),
        "{}",
        r.reason
    );
}

#[test]
fn without_consumers_everything_but_the_signature_is_checked() {
    let p = policy(serde_json::json!({}));
    let auth = oauth_header(
        None,
        &[
            ("oauth_consumer_key", "anyone"),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_signature", "bm90IGNoZWNrZWQ="),
            ("oauth_timestamp", "1000"),
            ("oauth_nonce", "n"),
        ],
    );
    let req = request("GET", "/", &[("authorization", &auth)], None);
    let mut host = FakeHost::at(1000);
    assert_eq!(
        p.evaluate(&req, &mut host),
        Ok(Verdict::Checked {
            consumer: "anyone".into()
        })
    );
    assert_eq!(
        p.evaluate(&req, &mut host).unwrap_err().problem,
        Problem::NonceUsed
    );
    assert_refused(&p, &req, 5000, 401, Problem::TimestampRefused);
    let plaintext = request(
        "GET",
        "/",
        &[("authorization", &auth.replace("RSA-SHA1", "PLAINTEXT"))],
        None,
    );
    assert_refused(&p, &plaintext, 1000, 400, Problem::SignatureMethodRejected);
}

#[test]
fn denials_have_the_documented_shape() {
    let p = hmac_policy();
    let deny = |req: &Request| match p.decide(req, &mut FakeHost::at(1000)) {
        Decision::Deny(d) => d,
        Decision::Allow(_) => panic!("allowed"),
    };
    let bad_request = deny(&request(
        "GET",
        "/",
        &[("authorization", "OAuth a=\"")],
        None,
    ));
    assert_eq!(bad_request.status, 400);
    assert_eq!(bad_request.headers.len(), 1);
    assert_eq!(bad_request.headers[0].name, "content-type");
    assert_eq!(bad_request.headers[0].value, b"text/plain; charset=utf-8");
    assert_eq!(bad_request.body, b"oauth_problem=parameter_rejected\n");

    let mut forged = k2_request("GET", "/", &[], None, None);
    forged.path_with_query = "/admin".into();
    let unauthorized = deny(&forged);
    assert_eq!(unauthorized.status, 401);
    assert_eq!(unauthorized.headers[1].name, "www-authenticate");
    assert_eq!(unauthorized.headers[1].value, b"OAuth realm=\"wiki\"");
    assert_eq!(unauthorized.body, b"oauth_problem=signature_invalid\n");

    // Default realm without a public_base_url.
    let bare = policy(serde_json::json!({}));
    match bare.decide(&request("GET", "/", &[], None), &mut FakeHost::at(0)) {
        Decision::Deny(d) => assert_eq!(d.headers[1].value, b"OAuth realm=\"gateway\""),
        Decision::Allow(_) => panic!("allowed"),
    }
}

#[test]
fn reasons_keep_secrets_out() {
    let p = hmac_policy();
    let signature_text = "MdpQcU8iPSUjWoN/UDMsK2sui9I=";
    let mut requests = Vec::new();
    // Bad signature, unknown token, stale, replay-able, altered.
    let mut forged = k2_request("GET", "/", &[], None, Some(("tok", "tok-secret")));
    forged.path_with_query = "/x".into();
    requests.push((forged, 1000));
    requests.push((k2_request("GET", "/", &[], None, Some(("nope", "x"))), 1000));
    requests.push((k2_request("GET", "/", &[], None, None), 99_999));
    let auth = oauth_header(
        None,
        &[
            ("oauth_consumer_key", "k2"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_signature", signature_text),
            ("oauth_timestamp", "1000"),
            ("oauth_nonce", "n"),
        ],
    );
    requests.push((request("GET", "/", &[("authorization", &auth)], None), 1000));
    for (req, now) in requests {
        let r = refusal(&p, &req, now);
        let header = String::from_utf8(req.headers[0].value.clone()).unwrap();
        let sig = header
            .split("oauth_signature=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for secret in [
            "shared-consumer-secret",
            "tok-secret",
            signature_text,
            sig,
            header.as_str(),
        ] {
            assert!(
                !r.reason.contains(secret),
                "{:?} leaks {secret:?}",
                r.reason
            );
        }
        assert!(!r.reason.contains(&*String::from_utf8_lossy(
            &crate::encoding::decode(sig.as_bytes(), false).unwrap()
        )));
    }
}

#[test]
fn method_is_upper_cased_for_the_base_string() {
    let p = hmac_policy();
    let mut req = k2_request("GET", "/", &[], None, None);
    req.method = "get".into();
    assert_eq!(allowed(&p, &req, 1000), verified("k2"));
}

#[test]
fn empty_oauth_token_is_signed_but_means_no_token() {
    // Two-legged application-link requests carry `oauth_token=""` and
    // `xoauth_requestor_id` in the query; both are signed like any other
    // parameter.
    let auth = oauth_header(
        Some(""),
        &[
            ("oauth_consumer_key", "jira"),
            ("oauth_token", ""),
            ("oauth_signature_method", "RSA-SHA1"),
            ("oauth_timestamp", "1000"),
            ("oauth_nonce", "2lo"),
            ("oauth_version", "1.0"),
        ],
    );
    let req = request(
        "GET",
        "/rest/api/2/issue/ABC-1?xoauth_requestor_id=admin",
        &[("authorization", &auth)],
        None,
    );
    let base = signature_base_string(WIKI, &req).unwrap().unwrap();
    assert!(base.contains("oauth_token%3D%26"), "{base}");
    let req = sign_rsa(req, WIKI);
    let mut host = FakeHost::at(1000);
    assert_eq!(
        hmac_policy().evaluate(&req, &mut host),
        Ok(verified("jira"))
    );
    assert_eq!(host.inserts[0].0, nonce_key("jira", "", 1000, "2lo"));
}

/// Through the component's glue (`OAuth1` and the SDK's host calls), as
/// the gateway runs it: the clock and the replay set are the host's, and a
/// verified consumer is logged.
#[test]
fn the_plugin_uses_the_hosts_clock_and_replay_set_and_logs_the_consumer() {
    use plugin_sdk::{testing, Policy as _};

    testing::reset();
    testing::set_now(RFC_1_2_TIME);
    let config = serde_json::json!({
        "public_base_url": "http://photos.example.net",
        "consumers": [{
            "key": "dpf43f3p2l4k3l03",
            "secret": "kd94hf93k423kf44",
            "token_secrets": {"nnch734d00sl2jdk": "pfkkdhi9sl3r4s00"}
        }]
    });
    let plugin = crate::OAuth1::init(&config.to_string()).unwrap();
    let req = rfc_1_2_request("MdpQcU8iPSUjWoN/UDMsK2sui9I=");
    let ctx = testing::context();

    assert!(plugin.on_request(&ctx, &req).is_allow());
    let logs = testing::logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(logs[0].1.contains("\"dpf43f3p2l4k3l03\""), "{logs:?}");

    let replayed = plugin.on_request(&ctx, &req);
    let denial = replayed.denial().expect("a replayed nonce is refused");
    assert_eq!(denial.status, 401);
    assert_eq!(denial.body, b"oauth_problem=nonce_used\n");

    // The host's clock decides the timestamp window.
    testing::reset();
    testing::set_now(RFC_1_2_TIME + 3_600);
    let late = plugin.on_request(&ctx, &req);
    assert_eq!(
        late.denial().map(|d| d.body.as_slice()),
        Some(&b"oauth_problem=timestamp_refused\n"[..])
    );
}
