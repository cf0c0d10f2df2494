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
    // words are skipped without looking at them further. Token characters
    // are ASCII, so tokens are cut at byte positions that are always char
    // boundaries (a long prompt is scanned without decoding it).
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Skip to the next token, then to its end.
        while i < bytes.len() && !TOKEN_BYTE[usize::from(bytes[i])] {
            i += 1;
        }
        let from = i;
        while i < bytes.len() && TOKEN_BYTE[usize::from(bytes[i])] {
            i += 1;
        }
        if i - from >= MIN_TOKEN
            && let Some(why) = s.get(from..i).and_then(classify)
        {
            return Some(why);
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
/// dots, the first (a JSON header) starting with `eyJ`.
fn has_jwt(s: &str) -> bool {
    let b64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    s.match_indices("eyJ").any(|(at, _)| {
        let rest = &s[at..];
        let end = rest
            .find(|c: char| !(b64url(c) || c == '.'))
            .unwrap_or(rest.len());
        let parts: Vec<&str> = rest[..end].split('.').collect();
        parts.len() >= 3 && parts[..3].iter().all(|p| p.len() >= 8)
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
    // Key ids in any case: a host name (`akia….example`) lower-cases one.
    let upper = token.to_ascii_uppercase();
    for prefix in ["AKIA", "ASIA"] {
        if let Some(rest) = upper.strip_prefix(prefix)
            && rest.len() >= 16
            && rest[..16]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Some("looks like an AWS access key id (AKIA…)");
        }
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
}
