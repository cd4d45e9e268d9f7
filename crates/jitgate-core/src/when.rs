//! When a scheduled request's window opens (`jitgate request prod-db --at "2026-12-02 22:00
//! Europe/Paris" --for 2h`): the forms a person types, parsed to an instant.
//!
//! Accepted: an RFC 3339 instant (`2026-12-02T21:00:00Z`, `...+01:00`), an RFC 9557 zoned
//! date-time (`2026-12-02T22:00+01:00[Europe/Paris]`), a civil date and time followed by an IANA
//! time zone name or `UTC` (`2026-12-02 22:00 Europe/Paris`, `2026-12-02T22:00:30 UTC`), and a
//! delay from now (`+3h`, `in 90m`). A civil time without a zone uses `local` when given (the
//! CLI passes the machine's zone) and is refused otherwise: a server never guesses whose
//! "22:00" it is. A civil time a DST change skips or repeats resolves the way RFC 9557 calls
//! "compatible" (the later instant of a gap, the earlier of a fold).

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::duration::HumanDuration;

/// How far ahead a window may be asked for.
pub const MAX_AHEAD: HumanDuration = HumanDuration(30 * 86_400);

/// Parse `input` (see the module docs) relative to `now`.
pub fn parse_at(input: &str, now: Timestamp, local: Option<&TimeZone>) -> Result<Timestamp, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("an empty start time".into());
    }
    let delay = s.strip_prefix('+').or_else(|| s.strip_prefix("in "));
    if let Some(d) = delay {
        let d = HumanDuration::parse(d.trim()).map_err(|e| format!("`{s}`: {e}"))?;
        return now
            .checked_add(d.as_signed())
            .map_err(|_| format!("`{s}` is too far ahead"));
    }
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Ok(z) = s.parse::<Zoned>() {
        return Ok(z.timestamp());
    }
    let (civil, zone) = match s.rsplit_once(' ') {
        Some((head, tail)) if tail.contains('/') || tail.eq_ignore_ascii_case("utc") => (head.trim(), Some(tail)),
        _ => (s, None),
    };
    let dt: DateTime = civil.parse().map_err(|_| {
        format!("`{s}` is not a time: write `YYYY-MM-DD HH:MM ZONE` (e.g. `2026-12-02 22:00 Europe/Paris`), an RFC 3339 instant (`2026-12-02T21:00:00Z`) or a delay (`+3h`)")
    })?;
    let tz = match zone {
        Some(name) if name.eq_ignore_ascii_case("utc") => TimeZone::UTC,
        Some(name) => TimeZone::get(name).map_err(|_| {
            format!("unknown time zone `{name}`: use an IANA name such as Europe/Paris, America/New_York or UTC")
        })?,
        None => match local {
            Some(tz) => tz.clone(),
            None => {
                return Err(format!(
                    "`{s}` has no time zone: add one (`{civil} Europe/Paris`, `{civil} UTC`) or an offset (`{}`)",
                    civil.replace(' ', "T") + "+01:00"
                ));
            }
        },
    };
    dt.to_zoned(tz)
        .map(|z| z.timestamp())
        .map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().expect("time")
    }

    fn at(s: &str) -> Result<String, String> {
        parse_at(s, now(), None).map(|t| t.to_string())
    }

    #[test]
    fn forms() {
        assert_eq!(
            at("2026-12-02 22:00 Europe/Paris").as_deref(),
            Ok("2026-12-02T21:00:00Z")
        );
        assert_eq!(at("2026-12-02T22:00:30 UTC").as_deref(), Ok("2026-12-02T22:00:30Z"));
        assert_eq!(at("2026-12-02 22:00 utc").as_deref(), Ok("2026-12-02T22:00:00Z"));
        assert_eq!(at("2026-12-02T21:00:00Z").as_deref(), Ok("2026-12-02T21:00:00Z"));
        assert_eq!(at("2026-12-02T22:00:00+01:00").as_deref(), Ok("2026-12-02T21:00:00Z"));
        assert_eq!(
            at("2026-12-02T22:00+01:00[Europe/Paris]").as_deref(),
            Ok("2026-12-02T21:00:00Z")
        );
        // Summer time: Paris is UTC+2.
        assert_eq!(
            at("2026-07-01 09:30 Europe/Paris").as_deref(),
            Ok("2026-07-01T07:30:00Z")
        );
        assert_eq!(at("+3h").as_deref(), Ok("2026-12-01T15:00:00Z"));
        assert_eq!(at("in 90m").as_deref(), Ok("2026-12-01T13:30:00Z"));
    }

    #[test]
    fn zone_is_required_without_a_local_one() {
        let e = at("2026-12-02 22:00").unwrap_err();
        assert!(e.contains("no time zone"), "{e}");
        let paris = TimeZone::get("Europe/Paris").expect("tz");
        let t = parse_at("2026-12-02 22:00", now(), Some(&paris)).expect("local");
        assert_eq!(t.to_string(), "2026-12-02T21:00:00Z");
    }

    #[test]
    fn clear_errors() {
        let e = at("2026-12-02 22:00 Mars/Olympus").unwrap_err();
        assert!(e.contains("unknown time zone `Mars/Olympus`"), "{e}");
        let e = at("tomorrow evening").unwrap_err();
        assert!(e.contains("YYYY-MM-DD HH:MM ZONE"), "{e}");
        let e = at("+3 fortnights").unwrap_err();
        assert!(e.starts_with("`+3 fortnights`"), "{e}");
        assert!(at("").is_err());
        // A skipped hour (Paris, 2026-03-29 02:30) resolves to the later instant.
        assert_eq!(
            at("2026-03-29 02:30 Europe/Paris").as_deref(),
            Ok("2026-03-29T01:30:00Z")
        );
    }
}
