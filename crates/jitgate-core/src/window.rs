//! Weekday/time windows for auto-approval: `"Mon-Fri 08:00-18:00 Europe/Berlin"`.
//!
//! Grammar: `DAYS START-END [TIMEZONE]`. `DAYS` is a range (`Mon-Fri`), a list (`Mon,Wed,Sat`),
//! or `daily`/`*`. Times are `HH:MM` in 24-hour form; `END` may be earlier than `START` for an
//! overnight window (`22:00-06:00`), which then belongs to the day it started. The time zone is an
//! IANA name and defaults to UTC. The window is half-open: `START <= t < END`.

use std::fmt;

use jiff::{Timestamp, tz::TimeZone};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A parsed weekly window.
#[derive(Clone)]
pub struct Window {
    text: String,
    /// Bit i set = weekday i (Monday = 0) is in the window.
    days: u8,
    start_min: u16,
    end_min: u16,
    tz: TimeZone,
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({:?})", self.text)
    }
}

impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn err(input: &str, why: impl fmt::Display) -> String {
    format!(
        "invalid window `{input}`: {why}; write it like \"Mon-Fri 08:00-18:00 Europe/Berlin\" \
         (days, a time range, an optional IANA time zone)"
    )
}

fn day_index(s: &str) -> Option<u8> {
    let l = s.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| l == *d || (l.len() > 3 && d.starts_with(&l[..3]) && l.len() <= 9))
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_time(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

impl Window {
    /// Parse a window expression.
    pub fn parse(input: &str) -> Result<Self, String> {
        let parts: Vec<&str> = input.split_whitespace().collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(err(input, "expected 2 or 3 space-separated parts"));
        }
        let days = parse_days(parts[0]).ok_or_else(|| err(input, "unknown days"))?;
        let (s, e) = parts[1]
            .split_once('-')
            .ok_or_else(|| err(input, "the time range needs a `-`"))?;
        let start_min = parse_time(s).ok_or_else(|| err(input, format!("bad time `{s}`")))?;
        let end_min = parse_time(e).ok_or_else(|| err(input, format!("bad time `{e}`")))?;
        if start_min == end_min {
            return Err(err(input, "the time range is empty"));
        }
        let tz = match parts.get(2) {
            Some(name) => TimeZone::get(name).map_err(|_| err(input, format!("unknown time zone `{name}`")))?,
            None => TimeZone::UTC,
        };
        Ok(Self {
            text: input.to_string(),
            days,
            start_min,
            end_min,
            tz,
        })
    }

    /// True when `at` falls inside the window.
    pub fn contains(&self, at: Timestamp) -> bool {
        let z = at.to_zoned(self.tz.clone());
        let day = z.weekday().to_monday_zero_offset();
        let minute = u16::try_from(i32::from(z.hour()) * 60 + i32::from(z.minute())).unwrap_or(0);
        let has = |d: i8| {
            let d = u8::try_from(d.rem_euclid(7)).unwrap_or(0);
            self.days & (1 << d) != 0
        };
        if self.start_min < self.end_min {
            has(day) && minute >= self.start_min && minute < self.end_min
        } else {
            (has(day) && minute >= self.start_min) || (has(day - 1) && minute < self.end_min)
        }
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_days(s: &str) -> Option<u8> {
    let l = s.to_ascii_lowercase();
    if l == "daily" || l == "*" {
        return Some(0x7f);
    }
    let mut bits = 0u8;
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (day_index(a)?, day_index(b)?);
            let mut d = a;
            loop {
                bits |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
        } else {
            bits |= 1 << day_index(part)?;
        }
    }
    Some(bits)
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn weekday_business_hours_in_a_time_zone() {
        let w = Window::parse("Mon-Fri 08:00-18:00 Europe/Berlin").map_err(|e| e.to_string());
        let Ok(w) = w else { panic!("{w:?}") };
        // Tuesday 2026-11-24 09:00 Berlin = 08:00 UTC.
        assert!(w.contains(ts("2026-11-24T08:00:00Z")));
        // 07:59 UTC = 08:59 Berlin: inside. 06:59 UTC = 07:59 Berlin: outside.
        assert!(!w.contains(ts("2026-11-24T06:59:00Z")));
        // 17:00 UTC = 18:00 Berlin: end is exclusive.
        assert!(!w.contains(ts("2026-11-24T17:00:00Z")));
        // Saturday.
        assert!(!w.contains(ts("2026-11-28T10:00:00Z")));
    }

    #[test]
    fn overnight_window_belongs_to_its_start_day() {
        let Ok(w) = Window::parse("Fri 22:00-06:00") else {
            panic!()
        };
        assert!(w.contains(ts("2026-11-27T23:00:00Z"))); // Friday night
        assert!(w.contains(ts("2026-11-28T05:00:00Z"))); // Saturday early
        assert!(!w.contains(ts("2026-11-28T23:00:00Z"))); // Saturday night
    }

    #[test]
    fn refuses_bad_windows() {
        for bad in [
            "Mon-Fri",
            "Funday 08:00-09:00",
            "Mon 8-9",
            "Mon 25:00-26:00 UTC",
            "Mon 08:00-18:00 Mars/Olympus",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        assert!(Window::parse("Mon,Wed,Sat 00:00-24:00").is_ok());
        assert!(Window::parse("daily 09:00-17:00 UTC").is_ok());
    }
}
