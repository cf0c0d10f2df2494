//! Detection of plaintext secrets in tenant files.
//!
//! Bundles are copied to every call node and must never carry a credential.
//! A tenant names its key with a reference (`key_ref = "vault:…"`); anything
//! shaped like a key itself is refused.

/// Prefixes of a `key_ref` that is a reference to a secret store.
pub const KEY_REF_SCHEMES: &[&str] = &["vault:", "aws-sm:", "gcp-sm:", "azure-kv:"];

/// Why a string looks like a secret, or `None` if it does not.
pub fn find_secret(s: &str) -> Option<&'static str> {
    if s.contains("-----BEGIN") && s.contains("PRIVATE KEY") {
        return Some("holds a PEM private key block");
    }
    if has_jwt(s) {
        return Some("looks like a JSON Web Token (eyJ….….…)");
    }
    // Every shape below is at least MIN_TOKEN characters long, so ordinary
    // words are skipped without looking at them further: the scan counts
    // the token characters in a row and stops only when the count reaches
    // MIN_TOKEN (a test a byte that is almost never true, where skipping
    // word by word branched unpredictably at every word's end). Token characters are ASCII, so tokens are cut at byte
    // positions that are always char boundaries (a long prompt is scanned
    // without decoding it).
    let bytes = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        run = (run + 1) * usize::from(TOKEN_BYTE[usize::from(bytes[i])]);
        i += 1;
        if run == MIN_TOKEN {
            let from = i - MIN_TOKEN;
            while i < bytes.len() && TOKEN_BYTE[usize::from(bytes[i])] {
                i += 1;
            }
            if let Some(why) = s.get(from..i).and_then(classify) {
                return Some(why);
            }
            run = 0;
        }
    }
    None
}

/// [`is_token_char`] for each byte (all token characters are ASCII).
const TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = is_token_char(b as u8 as char);
        b += 1;
    }
    table
};

/// Whether `s` holds a JSON Web Token: three base64url parts joined by
/// dots, the first (a JSON header) starting with `eyJ`. Each run of
/// base64url characters and dots is looked at once.
fn has_jwt(s: &str) -> bool {
    if !s.contains("eyJ") {
        return false;
    }
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    s.split(|c: char| !(b64url(c) || c == '.'))
        .filter(|run| run.contains("eyJ"))
        .any(|run| {
            let parts: Vec<&str> = run.split('.').collect();
            parts.windows(3).any(|w| {
                w[0].find("eyJ").is_some_and(|at| w[0].len() - at >= 8)
                    && w[1].len() >= 8
                    && w[2].len() >= 8
            })
        })
}

/// The shortest token any rule can match (`sk-` and 16 characters).
const MIN_TOKEN: usize = 19;

const fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=')
}

fn classify(token: &str) -> Option<&'static str> {
    let tail_len = |prefix: &str| {
        token
            .strip_prefix(prefix)
            .map(|rest| {
                rest.bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
                    .count()
            })
            .unwrap_or(0)
    };
    if tail_len("sk-") >= 16 {
        return Some("looks like an API key (sk-…)");
    }
    for prefix in ["AKIA", "ASIA"] {
        if let Some(rest) = token.strip_prefix(prefix)
            && rest.len() >= 16
            && rest[..16]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Some("looks like an AWS access key id (AKIA…)");
        }
    }
    // Lower-cased (a host name, `akia….example`): exactly the 20 characters
    // of a key id, base32 with at least one digit, so that words such as
    // `asiapacificlogistics` are not taken for one.
    let key_id_prefix = token
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("akia") || p.eq_ignore_ascii_case("asia"));
    let base32 = |b: u8| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b);
    if token.len() == 20
        && key_id_prefix
        && token.bytes().any(|b| (b'2'..=b'7').contains(&b))
        && token.bytes().all(base32)
    {
        return Some("looks like an AWS access key id (AKIA…, in another case)");
    }
    for prefix in ["ghp_", "gho_", "github_pat_", "xoxb-", "xoxp-", "AIza"] {
        if tail_len(prefix) >= 20 {
            return Some("looks like an access token");
        }
    }
    // Random keys mix cases and digits; hyphenated words and paths do not
    // reach this entropy unless very long and random.
    if token.len() < 32 {
        return None;
    }
    let digits = token.bytes().any(|b| b.is_ascii_digit());
    let upper = token.bytes().any(|b| b.is_ascii_uppercase());
    let lower = token.bytes().any(|b| b.is_ascii_lowercase());
    let entropy = shannon_entropy(token);
    let mixed_case_key = token.len() >= 32 && digits && upper && lower && entropy >= 4.2;
    let long_random = token.len() >= 40 && digits && (upper || lower) && entropy >= 4.6;
    if mixed_case_key || long_random {
        return Some("looks like a high-entropy token (a key or password)");
    }
    None
}

/// Bits per character of `s`.
fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_key_shapes() {
        assert!(find_secret("use sk-proj-abcdefghijklmnop1234 please").is_some());
        assert!(find_secret("sk-ant-api03-abcdefghijklmnopqrstuv").is_some());
        assert!(find_secret("AKIAIOSFODNN7EXAMPLE").is_some());
        assert!(find_secret("token: 8fJ2kLq9Zx7vB3nM1pQ4rT6yU0wE5aS2dF").is_some());
    }

    #[test]
    fn key_ids_in_any_case_but_not_words_that_start_like_one() {
        assert!(find_secret("help.akiaiosfodnn7example.acme.example").is_some());
        assert!(find_secret("help.asiapacificlogistics.example").is_none());
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhY21lIn0.c2lnbmF0dXJlLWJ5dGVz";
        assert!(find_secret(&format!("token {jwt} here")).is_some());
        // Linear in the text: a long run of `eyJ` is looked at once.
        let long = "eyJ".repeat(200_000);
        let start = std::time::Instant::now();
        let _ = find_secret(&long);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn passes_ordinary_text_and_references() {
        assert!(find_secret("vault:tenants/acme-hvac/openai").is_none());
        assert!(
            find_secret("aws-sm:arn:aws:secretsmanager:us-east-1:123456789012:secret:acme-openai")
                .is_none()
        );
        assert!(
            find_secret("You are Ava, the receptionist for Acme HVAC. Ask for the caller's name.")
                .is_none()
        );
        assert!(find_secret("https://acme.example/assets/logo-2026.png").is_none());
        assert!(find_secret("550e8400-e29b-41d4-a716-446655440000").is_none());
        assert!(find_secret("vault:tenants/cedar-plumbing-000276/llm").is_none());
        assert!(
            find_secret("Book visits for riverside-landscaping-000123 customers only").is_none()
        );
    }

    /// The scan finds what classifying every token of MIN_TOKEN or more
    /// characters, in order, finds (the scan it replaced).
    #[test]
    fn the_counting_scan_matches_classifying_every_long_token() {
        fn reference(s: &str) -> Option<&'static str> {
            s.split(|c: char| !is_token_char(c))
                .filter(|t| t.len() >= MIN_TOKEN)
                .find_map(classify)
        }
        let pieces = [
            "sk-",
            "abcdefghij",
            "ABCDEFGH12",
            "AKIA",
            "IOSFODNN7EXAMPLE",
            " ",
            ".",
            "é",
            "-_+/=",
            "8fJ2kLq9Zx",
            "ghp_",
            "0123456789",
        ];
        let texts = crate::test_texts::sequences(&pieces, 5);
        for text in &texts {
            if text.contains("-----BEGIN") || text.contains("eyJ") {
                continue;
            }
            assert_eq!(find_secret(text), reference(text), "{text:?}");
        }
    }
}
