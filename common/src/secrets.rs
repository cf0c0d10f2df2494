//! Detection of plaintext secrets in tenant files.
//!
//! Bundles are copied to every call node and must never carry a credential.
//! A tenant names its key with a reference (`key_ref = "vault:…"`); anything
//! shaped like a key itself is refused.

/// Prefixes of a `key_ref` that is a reference to a secret store.
pub const KEY_REF_SCHEMES: &[&str] = &["vault:", "aws-sm:", "gcp-sm:", "azure-kv:"];

/// Why a string looks like a secret, or `None` if it does not.
pub fn find_secret(s: &str) -> Option<&'static str> {
    // Every shape below is at least MIN_TOKEN characters long, so ordinary
    // words are skipped without looking at them further.
    s.split(|c: char| !is_token_char(c))
        .filter(|t| t.len() >= MIN_TOKEN)
        .find_map(classify)
}

/// The shortest token any rule can match (`sk-` and 16 characters).
const MIN_TOKEN: usize = 19;

fn is_token_char(c: char) -> bool {
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
