//! Human durations: `"90s"`, `"15m"`, `"1h30m"`, `"2d"`.
//!
//! Used in `gateway.toml`, on the command line (`--for 1h`) and in the API. The format is
//! deliberately small: a sequence of `<integer><unit>` with units `s`, `m`, `h`, `d`, `w`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds, parsed from and printed as a human duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub u64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {why}; write it like \"90s\", \"15m\", \"1h30m\" or \"2d\"")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

impl HumanDuration {
    /// Seconds in this duration.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// From minutes.
    pub const fn minutes(m: u64) -> Self {
        Self(m * 60)
    }

    /// From hours.
    pub const fn hours(h: u64) -> Self {
        Self(h * 3600)
    }

    /// As a signed jiff duration (saturating).
    pub fn as_signed(self) -> jiff::SignedDuration {
        jiff::SignedDuration::from_secs(i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    /// Parse `"1h30m"` and friends.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let err = |why| DurationError {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total: u64 = 0;
        let mut num: Option<u64> = None;
        for c in s.chars() {
            if let Some(d) = c.to_digit(10) {
                let n = num.unwrap_or(0);
                num = Some(
                    n.checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or_else(|| err("the number is too large"))?,
                );
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(err("unknown unit (use s, m, h, d or w)")),
            };
            let n = num.take().ok_or_else(|| err("a unit has no number before it"))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| err("the duration is too large"))?;
        }
        if num.is_some() {
            return Err(err("the last number has no unit"));
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0;
        if s == 0 {
            return write!(f, "0s");
        }
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= len {
                write!(f, "{}{}", s / len, unit)?;
                s %= len;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(HumanDuration::parse("90s"), Ok(HumanDuration(90)));
        assert_eq!(HumanDuration::parse("1h30m"), Ok(HumanDuration(5400)));
        assert_eq!(HumanDuration::parse("2d"), Ok(HumanDuration(172_800)));
        assert_eq!(HumanDuration::parse(" 1w "), Ok(HumanDuration(604_800)));
    }

    #[test]
    fn refuses_malformed_durations_with_a_hint() {
        for bad in ["", "h", "10", "1x", "1h30", "99999999999999999999s"] {
            let e = HumanDuration::parse(bad).err();
            assert!(e.is_some(), "{bad} should fail");
            assert!(e.map(|e| e.to_string()).unwrap_or_default().contains("1h30m"));
        }
    }

    #[test]
    fn prints_the_shortest_form() {
        assert_eq!(HumanDuration(5400).to_string(), "1h30m");
        assert_eq!(HumanDuration(0).to_string(), "0s");
        assert_eq!(HumanDuration(90061).to_string(), "1d1h1m1s");
    }
}
