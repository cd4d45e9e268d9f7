//! HTML without a template engine: every piece of text from outside goes through [`esc`] (or
//! the `Display` of [`Text`]), and pages are assembled from small functions. The page shell
//! carries the navigation, the signed-in user, the sign-out form and the flash messages.

use std::fmt::Write as _;

/// Escape text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a query value.
pub fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A human duration: `1h 5m`, `42s`.
pub fn dur(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A UTC timestamp, to the second, in a `<time>` element.
pub fn time(t: jiff::Timestamp) -> String {
    let s = t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    format!("<time datetime=\"{}\">{}</time>", esc(&t.to_string()), esc(&s))
}

/// A countdown to `until` (the script ticks it every second; without script it says the
/// remaining time at render).
pub fn countdown(until: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let left = until.as_second() - now.as_second();
    format!(
        "<span class=\"countdown\" data-expires=\"{}\" role=\"timer\" aria-live=\"off\">{} left</span>",
        until.as_second(),
        esc(&dur(left))
    )
}

/// The hidden CSRF field of a form.
pub fn csrf(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"_csrf\" value=\"{}\">", esc(token))
}

/// A one-button form posting to `action` (with an optional reason field).
pub fn button_form(action: &str, csrf_token: &str, label: &str, class: &str, reason: Option<&str>) -> String {
    let reason = reason.map_or(String::new(), |placeholder| {
        let id = format!("r{}", hex::encode(rand::random::<[u8; 4]>()));
        format!(
            "<label for=\"{id}\" class=\"sr-only\">Reason</label><input id=\"{id}\" name=\"reason\" placeholder=\"{}\">",
            esc(placeholder)
        )
    });
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}{reason}<button type=\"submit\" class=\"{}\">{}</button></form>",
        esc(action),
        csrf(csrf_token),
        esc(class),
        esc(label)
    )
}

/// A line to copy, with a copy button (the button needs script; the text is selectable anyway).
pub fn copy_line(id: &str, text: &str) -> String {
    format!(
        "<div class=\"copy\"><pre id=\"{id}\">{}</pre><button type=\"button\" class=\"small\" data-copy=\"{id}\" aria-label=\"Copy to the clipboard\">Copy</button></div>",
        esc(text)
    )
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Access,
    Approvals,
    Now,
    Reviews,
    Audit,
    None,
}

/// What the page shell shows about the signed-in user.
pub struct Shell<'a> {
    pub name: &'a str,
    pub csrf: &'a str,
    pub inbox: usize,
    pub flash: Vec<(bool, String)>,
    pub live: bool,
    pub extra_head: &'a str,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A whole page.
pub fn page(title: &str, nav: Nav, shell: Option<&Shell<'_>>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    let live = shell.is_some_and(|s| s.live);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · jitgate</title><link rel=\"stylesheet\" href=\"/ui/static/console.css?v={VERSION}\">{}<script src=\"/ui/static/console.js?v={VERSION}\" defer></script></head><body{}><a class=\"skip\" href=\"#main\">Skip to content</a>",
        esc(title),
        shell.map_or("", |s| s.extra_head),
        if live { " data-live=\"1\"" } else { "" }
    );
    h.push_str("<header><span class=\"brand\">jitgate</span>");
    if let Some(s) = shell {
        h.push_str("<nav aria-label=\"Main\"><ul>");
        for (n, href, label) in [
            (Nav::Access, "/ui/", "My access"),
            (Nav::Approvals, "/ui/approvals", "Approvals"),
            (Nav::Now, "/ui/now", "Access now"),
            (Nav::Reviews, "/ui/reviews", "Reviews"),
            (Nav::Audit, "/ui/audit", "Audit"),
        ] {
            let current = if n == nav { " aria-current=\"page\"" } else { "" };
            let badge = if n == Nav::Approvals && s.inbox > 0 {
                format!(
                    " <span class=\"badge\" id=\"inbox-count\" aria-label=\"{} waiting\">{}</span>",
                    s.inbox, s.inbox
                )
            } else {
                String::new()
            };
            let _ = write!(h, "<li><a href=\"{href}\"{current}>{label}{badge}</a></li>");
        }
        let _ = write!(
            h,
            "</ul></nav><div class=\"me\"><span id=\"me\">{}</span><form method=\"post\" action=\"/ui/logout\" class=\"inline\">{}<button type=\"submit\" class=\"link\">Sign out</button></form></div>",
            esc(s.name),
            csrf(s.csrf)
        );
    }
    h.push_str("</header><main id=\"main\" tabindex=\"-1\">");
    if let Some(s) = shell {
        for (ok, msg) in &s.flash {
            let (class, role) = if *ok {
                ("flash ok", "status")
            } else {
                ("flash err", "alert")
            };
            let _ = write!(h, "<p class=\"{class}\" role=\"{role}\">{}</p>", esc(msg));
        }
    }
    let _ = write!(h, "<h1>{}</h1>{body}</main></body></html>", esc(title));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(url("a b&c=d/é"), "a%20b%26c%3Dd/%C3%A9");
        assert_eq!(dur(3725), "1h 2m");
        assert_eq!(dur(59), "59s");
        assert_eq!(dur(-5), "0s");
    }
}
