//! Keeping a client's secrets out of what it shows and stores.
//!
//! A client holds up to two secrets: the API key (sent as a bearer token) and a password written
//! into the base URL (`http://user:password@host/v1`, sent as basic auth). [`Secrets`] knows
//! both and removes them:
//! - from text that will be shown ([`Secrets::redact_message`]: error bodies, transport errors):
//!   every occurrence of either secret, the whole user-info part of the URL, and any
//!   `Bearer <token>` / `Basic <token>` credential a server echoes back; callers cut the text to
//!   length only *after* this, so a secret straddling the cut cannot survive in part;
//! - from answers before they are returned or cached ([`Secrets::redact_answer`]): only the two
//!   secrets themselves, and only when they are at least [`MIN_ANSWER_SECRET`] characters long,
//!   so that placeholder keys of local servers (`none`, `EMPTY`) do not rewrite ordinary words.
//!
//! [`display_url`] gives the base URL with its password masked, for `repr`, messages and the
//! cache key (which therefore never depends on the password).

/// Secrets shorter than this are not searched for in answers (placeholders such as `none` or
/// `EMPTY` would otherwise turn ordinary words of an answer into `***`). Real API keys and
/// passwords worth hiding are longer; messages are redacted whatever the length.
pub const MIN_ANSWER_SECRET: usize = 8;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Credential schemes whose token is masked wherever it appears in a message.
const SCHEMES: [&str; 2] = ["bearer", "basic"];

/// The secrets of one client.
#[derive(Clone, Default)]
pub struct Secrets {
    /// The API key, the password from the URL (as written and percent-decoded), the URL's whole
    /// user-info part, and the `Basic` credential made of it; empty strings are left out.
    values: Vec<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} held)", self.values.len())
    }
}

/// The `user:password` part of `url` (between `://` and the last `@` of the authority), if any.
fn userinfo(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..end].rfind('@')?;
    Some((start, &rest[..at]))
}

/// `%XX` escapes decoded (invalid escapes kept as written); None when nothing was escaped or
/// the result is not UTF-8.
fn percent_decoded(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `url` with the password of its user-info part replaced by `***` (`http://u:***@host/v1`);
/// unchanged when it has none.
pub fn display_url(url: &str) -> String {
    match userinfo(url) {
        Some((start, info)) => match info.find(':') {
            Some(colon) => format!(
                "{}{}:{MASK}{}",
                &url[..start],
                &info[..colon],
                &url[start + info.len()..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Standard base64 with padding (RFC 4648), as in a `Basic` credential.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `c` may be part of a credential token (RFC 7235 token68).
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// `text` with the token after each `Bearer ` / `Basic ` (any case) masked, when the token is at
/// least [`MIN_ANSWER_SECRET`] characters long (so the prose "bearer token" is kept).
fn mask_credentials(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some((pos, scheme)) = SCHEMES
        .iter()
        .filter_map(|s| lower[from..].find(s).map(|p| (from + p, s.len())))
        .min()
    {
        let after = pos + scheme;
        let ws = text[after..]
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(text.len() - after);
        let token_start = after + ws;
        let token_len = text[token_start..]
            .find(|c: char| !token_char(c))
            .unwrap_or(text.len() - token_start);
        // No word-boundary check before the scheme: a hostile body may glue it to other text.
        if ws > 0 && token_len >= MIN_ANSWER_SECRET {
            out.push_str(&text[copied..token_start]);
            out.push_str(MASK);
            copied = token_start + token_len;
            from = copied;
        } else {
            from = after;
        }
    }
    out.push_str(&text[copied..]);
    out
}

impl Secrets {
    /// The secrets of a client with this base URL and API key.
    pub fn new(base_url: &str, api_key: Option<&str>) -> Self {
        let mut values: Vec<String> = Vec::new();
        values.extend(api_key.map(str::to_string));
        if let Some((_, info)) = userinfo(base_url) {
            if let Some(colon) = info.find(':') {
                let pw = &info[colon + 1..];
                values.extend(percent_decoded(pw));
                values.push(pw.to_string());
                // What the HTTP client sends: base64 of the percent-decoded `user:password`.
                let decoded = percent_decoded(info).unwrap_or_else(|| info.to_string());
                values.push(base64(decoded.as_bytes()));
            }
            values.push(info.to_string());
        }
        values.retain(|v| !v.is_empty());
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// `text` with every secret and every echoed credential masked; cut it to length only after.
    pub fn redact_message(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        mask_credentials(&out)
    }

    /// `text` with the secrets of at least [`MIN_ANSWER_SECRET`] characters masked, and whether
    /// any was found.
    pub fn redact_answer(&self, text: &str) -> (String, bool) {
        let mut out = None::<String>;
        for v in self.values.iter().filter(|v| v.len() >= MIN_ANSWER_SECRET) {
            let cur = out.as_deref().unwrap_or(text);
            if cur.contains(v.as_str()) {
                out = Some(cur.replace(v.as_str(), MASK));
            }
        }
        match out {
            Some(t) => (t, true),
            None => (text.to_string(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_password_is_masked_for_display() {
        assert_eq!(
            display_url("http://ann:s3cret@host:8000/v1"),
            "http://ann:***@host:8000/v1"
        );
        assert_eq!(
            display_url("https://host/v1?a=b@c"),
            "https://host/v1?a=b@c"
        );
        assert_eq!(display_url("http://ann@host/v1"), "http://ann@host/v1");
        assert_eq!(display_url("http://a:b:c@d@host"), "http://a:***@host");
        assert_eq!(display_url("not a url"), "not a url");
    }

    #[test]
    fn messages_lose_the_key_the_password_and_echoed_credentials() {
        let s = Secrets::new("http://ann:p%40ssword@h/v1", Some("sk-KEY-0123456789"));
        let body = "you sent Bearer sk-KEY-0123456789 and Basic YW5uOnBAc3N3b3Jk from \
                    http://ann:p%40ssword@h/v1 (p@ssword); authorization: bearer abcdefghij, \
                    a bearer token; Bearer\tZZZZZZZZZZZ\"}, xxxBasic WVdWaGFHRT0=";
        let r = s.redact_message(body);
        for secret in [
            "sk-KEY",
            "p%40ssword",
            "p@ssword",
            "YW5u",
            "abcdefghij",
            "ZZZZ",
            "WVdW",
        ] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("a bearer token") && r.contains("\"}"), "{r}");
        // A key of any length is masked in messages.
        assert_eq!(
            Secrets::new("http://h", Some("none")).redact_message("none"),
            MASK
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        // The credential an answer may echo is masked there too.
        let s = Secrets::new("http://ann:p%40ssword@h/v1", None);
        let (text, found) = s.redact_answer("you sent Basic YW5uOnBAc3N3b3Jk.");
        assert!(found && !text.contains("YW5u"), "{text}");
    }

    #[test]
    fn answers_lose_only_long_secrets() {
        let s = Secrets::new("http://h/v1", Some("sk-KEY-0123456789"));
        assert_eq!(
            s.redact_answer("the key is sk-KEY-0123456789."),
            ("the key is ***.".to_string(), true)
        );
        assert_eq!(
            s.redact_answer("Bearer tokens"),
            ("Bearer tokens".to_string(), false)
        );
        let placeholder = Secrets::new("http://h/v1", Some("none"));
        assert_eq!(
            placeholder.redact_answer("none of these"),
            ("none of these".to_string(), false)
        );
        assert!(format!("{s:?}").find("sk-").is_none());
    }
}
