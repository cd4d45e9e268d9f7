//! Name globs for `[[policies]] resources = ["prod-*"]`.
//!
//! `*` matches any run of characters (including none) and `?` exactly one; everything else is
//! literal. Resource names are short, so a simple backtracking matcher is plenty.

/// True when `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_and_question_mark() {
        assert!(matches("prod-*", "prod-db"));
        assert!(matches("*", "anything"));
        assert!(matches("*-db", "prod-db"));
        assert!(matches("web-?", "web-1"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("prod-*", "staging-db"));
        assert!(!matches("web-?", "web-12"));
        assert!(matches("prod-db", "prod-db"));
        assert!(!matches("prod-db", "prod-db2"));
    }
}
