//! What the SSH user name asks for: `LOGIN@RESOURCE` or just `RESOURCE` (its default login).

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetName {
    /// Upstream login, if named.
    pub login: Option<String>,
    /// Resource name.
    pub resource: String,
}

/// Parse an SSH user name. The last `@` separates the login from the resource.
pub fn parse(user: &str) -> Option<TargetName> {
    let user = user.trim();
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return None;
    }
    match user.rsplit_once('@') {
        Some((login, resource)) if !login.is_empty() && !resource.is_empty() => Some(TargetName {
            login: Some(login.to_string()),
            resource: resource.to_string(),
        }),
        Some(_) => None,
        None => Some(TargetName {
            login: None,
            resource: user.to_string(),
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
                resource: "web-1".into()
            })
        );
        assert_eq!(
            parse("web-1"),
            Some(TargetName {
                login: None,
                resource: "web-1".into()
            })
        );
        assert_eq!(parse("@web-1"), None);
        assert_eq!(parse("ubuntu@"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("a\u{7}b"), None);
        assert_eq!(parse(&"x".repeat(300)), None);
    }
}
