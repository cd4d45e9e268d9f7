//! What the SSH user name asks for: `LOGIN@RESOURCE` or just `RESOURCE` (its default login),
//! optionally with `+DURATION` (`root@web-1+30m`): how long a request on connect asks for.

use jitgate_core::HumanDuration;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetName {
    /// Upstream login, if named.
    pub login: Option<String>,
    /// Resource name.
    pub resource: String,
    /// `+DURATION`: for a request on connect.
    pub duration: Option<HumanDuration>,
}

/// Parse an SSH user name. The last `@` separates the login from the resource.
pub fn parse(user: &str) -> Option<TargetName> {
    let user = user.trim();
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return None;
    }
    let (rest, duration) = match user.rsplit_once('+') {
        Some((r, d)) if !d.contains('@') => (r, Some(d.parse::<HumanDuration>().ok().filter(|d| d.secs() > 0)?)),
        _ => (user, None),
    };
    match rest.rsplit_once('@') {
        Some((login, resource)) if !login.is_empty() && !resource.is_empty() => Some(TargetName {
            login: Some(login.to_string()),
            resource: resource.to_string(),
            duration,
        }),
        Some(_) => None,
        None if rest.is_empty() => None,
        None => Some(TargetName {
            login: None,
            resource: rest.to_string(),
            duration,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse("ubuntu@web-1"),
            Some(TargetName {
                login: Some("ubuntu".into()),
                resource: "web-1".into(),
                duration: None,
            })
        );
        assert_eq!(
            parse("ubuntu@web-1+90m"),
            Some(TargetName {
                login: Some("ubuntu".into()),
                resource: "web-1".into(),
                duration: Some(HumanDuration(5400)),
            })
        );
        assert_eq!(parse("web-1+2h").map(|t| t.duration), Some(Some(HumanDuration(7200))));
        assert_eq!(parse("web-1+soon"), None);
        assert_eq!(parse("web-1+0s"), None);
        assert_eq!(parse("+1h"), None);
        assert_eq!(
            parse("web-1"),
            Some(TargetName {
                login: None,
                resource: "web-1".into(),
                duration: None,
            })
        );
        assert_eq!(parse("@web-1"), None);
        assert_eq!(parse("ubuntu@"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("a\u{7}b"), None);
        assert_eq!(parse(&"x".repeat(300)), None);
    }
}
