//! The reversible mapping between an external MCP server's tool names and endpoint
//! names (subject tokens, `[A-Za-z0-9_-]+`), used by [`super::attach`]. Documented in
//! `docs/protocol.md`, "MCP tool names".
//!
//! | in the tool name | in the endpoint name |
//! |---|---|
//! | `A`–`Z`, `a`–`z`, `0`–`9`, `_` | itself |
//! | `-` | `--` |
//! | any other character `c` | `-` + the lowercase hex of `c`'s code point + `-` (`.` → `-2e-`, `/` → `-2f-`) |
//!
//! So `get_weather` stays `get_weather`, `list-files` becomes `list--files` and
//! `github.search` becomes `github-2e-search`; [`tool_name`] turns each back. The
//! mapping is injective: two tool names never share an endpoint name.

use std::fmt::Write as _;

/// The endpoint name (a subject token) of the MCP tool `tool`. Empty for an empty
/// name, which is no token: the caller rejects it.
pub fn endpoint_name(tool: &str) -> String {
    let mut out = String::with_capacity(tool.len());
    for c in tool.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' => out.push_str("--"),
            other => {
                let _ = write!(out, "-{:x}-", u32::from(other));
            }
        }
    }
    out
}

/// The MCP tool name an [`endpoint_name`] came from.
///
/// # Errors
/// A description of the first malformed escape, for a name [`endpoint_name`] cannot
/// have made (a lone `-`, hex digits that are no character, a missing closing `-`).
pub fn tool_name(endpoint: &str) -> Result<String, String> {
    let mut out = String::with_capacity(endpoint.len());
    let mut rest = endpoint;
    while let Some(at) = rest.find('-') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('-') {
            out.push('-');
            rest = tail;
            continue;
        }
        let end = after
            .find('-')
            .ok_or_else(|| format!("{endpoint:?}: escape at byte {at} has no closing '-'"))?;
        let hex = &after[..end];
        let c = u32::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(char::from_u32)
            .ok_or_else(|| format!("{endpoint:?}: {hex:?} is not the hex code of a character"))?;
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_stay_and_others_are_escaped() {
        for (tool, endpoint) in [
            ("get_weather", "get_weather"),
            ("list-files", "list--files"),
            ("github.search", "github-2e-search"),
            ("fs/read", "fs-2f-read"),
            ("a b", "a-20-b"),
            ("héllo", "h-e9-llo"),
            ("-", "--"),
        ] {
            assert_eq!(endpoint_name(tool), endpoint);
            assert_eq!(tool_name(endpoint).unwrap(), tool);
        }
    }

    #[test]
    fn every_endpoint_name_is_a_subject_token() {
        for tool in ["math.mul", "x/y/z", "ünï cödé", "a--b", "_._"] {
            let e = endpoint_name(tool);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{e}"
            );
            assert_eq!(tool_name(&e).unwrap(), tool);
        }
    }

    #[test]
    fn malformed_escapes_are_errors() {
        for bad in ["a-2e", "a-zz-b", "a---", "-110000-", "a-b"] {
            assert!(tool_name(bad).is_err(), "{bad} accepted");
        }
        // "--" is an escaped '-', so what follows is plain text.
        assert_eq!(tool_name("a--2e").unwrap(), "a-2e");
    }
}
