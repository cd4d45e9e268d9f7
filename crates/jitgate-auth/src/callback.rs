//! The loopback redirect `jitgate login` receives from the browser at the end of an
//! authorization-code login: the request head, its target and its query string
//! (`application/x-www-form-urlencoded`), read from whatever connects to the loopback port.

use std::collections::HashMap;

/// What a request to the loopback listener asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Not `GET /callback?…` (a favicon, a probe): answered 404, the wait goes on.
    Other,
    /// The identity provider refused: `error` and `error_description`.
    Refused {
        /// OAuth error code.
        error: String,
        /// Its description (may be empty).
        description: String,
    },
    /// The code and state to finish the login with.
    Code {
        /// Authorization code.
        code: String,
        /// State, checked against the one the login started with.
        state: String,
    },
    /// A callback without a code or state: answered 400, the wait goes on.
    Incomplete,
}

/// Read the request head (the bytes up to the blank line, lossy UTF-8).
pub fn parse(head: &[u8]) -> Redirect {
    let head = String::from_utf8_lossy(head);
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let Some(query) = target.strip_prefix("/callback?") else {
        return Redirect::Other;
    };
    let params = query_params(query);
    if let Some(error) = params.get("error") {
        return Redirect::Refused {
            error: error.clone(),
            description: params.get("error_description").cloned().unwrap_or_default(),
        };
    }
    match (params.get("code"), params.get("state")) {
        (Some(code), Some(state)) => Redirect::Code {
            code: code.clone(),
            state: state.clone(),
        },
        _ => Redirect::Incomplete,
    }
}

/// `k=v&k2=v2`, decoded; the first of repeated keys wins; pairs without `=` are dropped.
pub fn query_params(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        out.entry(percent_decode(k)).or_insert_with(|| percent_decode(v));
    }
    out
}

/// Form decoding: `+` is a space, `%XX` (two hex digits) a byte, anything else itself; the
/// bytes are then read as UTF-8 (invalid sequences replaced).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&x) = b.get(i) {
        match x {
            b'+' => out.push(b' '),
            b'%' => match (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(x),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: &u8) -> Option<u8> {
    char::from(*c).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_are_read_like_a_browser_sends_them() {
        assert_eq!(
            parse(b"GET /callback?code=a%2Bb+c&state=s%3D HTTP/1.1\r\nHost: x\r\n\r\n"),
            Redirect::Code {
                code: "a+b c".into(),
                state: "s=".into()
            }
        );
        assert_eq!(
            parse(b"GET /callback?error=access_denied&error_description=no%20way HTTP/1.1\r\n\r\n"),
            Redirect::Refused {
                error: "access_denied".into(),
                description: "no way".into()
            }
        );
        assert_eq!(parse(b"GET /favicon.ico HTTP/1.1\r\n\r\n"), Redirect::Other);
        assert_eq!(parse(b"GET /callback?code=x HTTP/1.1\r\n\r\n"), Redirect::Incomplete);
    }

    #[test]
    fn only_two_hex_digits_make_a_byte() {
        // u8::from_str_radix takes a sign: "%+1" used to decode to a control byte.
        assert_eq!(percent_decode("%+1%-1%4"), "% 1%-1%4");
        assert_eq!(percent_decode("%41%e2%82%ac%"), "A€%");
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("x%2Fy%3D"), "x/y=");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
