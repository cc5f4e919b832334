//! Timestamps on the wire: RFC 3339 in UTC with exactly three fractional
//! digits (`2026-11-28T03:06:05.590Z`), so every timestamp has the same
//! shape. Any RFC 3339 time is accepted on the way in.

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::BorrowedFormatItem;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const MILLIS_UTC: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats a time the way the API sends it.
///
/// # Errors
/// Only for years outside 0..=9999.
pub fn format(t: OffsetDateTime) -> Result<String, time::error::Format> {
    t.to_offset(UtcOffset::UTC).format(MILLIS_UTC)
}

/// `#[serde(with = "natter_proto::timefmt")]`.
///
/// # Errors
/// When the time cannot be formatted.
pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*t).map_err(S::Error::custom)?)
}

/// `#[serde(with = "natter_proto::timefmt")]`.
///
/// # Errors
/// When the text is not an RFC 3339 time.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
    let text = String::deserialize(d)?;
    OffsetDateTime::parse(&text, &Rfc3339).map_err(D::Error::custom)
}

/// The same for `Option<OffsetDateTime>` (`null` when absent).
pub mod option {
    use super::{Deserialize, Deserializer, OffsetDateTime, Serializer};

    /// `#[serde(with = "natter_proto::timefmt::option")]`.
    ///
    /// # Errors
    /// When the time cannot be formatted.
    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    /// `#[serde(with = "natter_proto::timefmt::option")]`.
    ///
    /// # Errors
    /// When the text is not an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super")] OffsetDateTime);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(t)| t))
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    #[test]
    fn always_three_fractional_digits_in_utc() {
        assert_eq!(
            super::format(datetime!(2026-11-28 03:21:52.5 UTC)).unwrap(),
            "2026-11-28T03:21:52.500Z"
        );
        assert_eq!(
            super::format(datetime!(2026-11-28 03:21:52 UTC)).unwrap(),
            "2026-11-28T03:21:52.000Z"
        );
        assert_eq!(
            super::format(datetime!(2026-11-28 04:21:52.123 +1)).unwrap(),
            "2026-11-28T03:21:52.123Z"
        );
    }
}
