//! Phone numbers: parsed and normalised to E.164 with libphonenumber's rules.

use std::fmt;

use phonenumber::Mode;

/// A phone number in E.164 form (`+14155550123`). Its `Debug` shows only the
/// country code and the last two digits, so it can appear in logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

/// How strictly numbers are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhoneValidation {
    /// The number must parse as an international number with a known country
    /// code and a plausible length. The seed's `+1234567890` passes.
    Parse,
    /// The number must also be a valid number in its country's numbering plan.
    Strict,
}

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid phone number in international format (e.g. +14155550123)")]
pub struct InvalidPhone(String);

/// Digits a number block leaves out: numbers that differ only in these are
/// one block for SMS rate limits.
const BLOCK_DIGITS: usize = 4;

/// Longest input accepted before parsing (E.164 is at most 15 digits; this
/// leaves room for spaces, dashes and brackets).
const MAX_INPUT_CHARS: usize = 32;

impl Phone {
    /// Parses an international number (it must start with `+` or `00`).
    ///
    /// # Errors
    /// [`InvalidPhone`] when it does not parse, or fails `validation`.
    pub fn parse(input: &str, validation: PhoneValidation) -> Result<Self, InvalidPhone> {
        let shown: String = input.chars().take(MAX_INPUT_CHARS).collect();
        let invalid = || InvalidPhone(shown.clone());
        let trimmed = input.trim();
        // Digits and the usual punctuation only: no letters (extensions),
        // no control characters, nothing that a parser might silently drop.
        let allowed = |c: char| c.is_ascii_digit() || " +-.()/".contains(c);
        if trimmed.chars().count() > MAX_INPUT_CHARS
            || !trimmed.chars().all(allowed)
            || !(trimmed.starts_with('+') || trimmed.starts_with("00"))
        {
            return Err(invalid());
        }
        // Without a home region, `00` is only understood as the international prefix.
        let international = match trimmed.strip_prefix("00") {
            Some(rest) => format!("+{rest}"),
            None => trimmed.to_owned(),
        };
        let number = phonenumber::parse(None, &international).map_err(|_| invalid())?;
        let mut valid = phonenumber::is_valid(&number);
        let mut e164 = number.format().mode(Mode::E164).to_string();
        // "+44 (0)20 …" and "+44 020 …" carry the trunk prefix after the
        // country code. Where that leaves an invalid number, drop the zeros so
        // both spellings reach the same account (numbers that really start with
        // 0, as in Italy, are valid and stay as they are).
        let country = number.code().value().to_string();
        let national = e164.get(1 + country.len()..).unwrap_or_default().to_owned();
        if !valid && national.starts_with('0') {
            let stripped = format!("+{country}{}", national.trim_start_matches('0'));
            if let Ok(n) = phonenumber::parse(None, &stripped) {
                valid = phonenumber::is_valid(&n);
                e164 = n.format().mode(Mode::E164).to_string();
            }
        }
        // E.164 caps a number at 15 digits including the country code.
        let digits = e164.len().saturating_sub(1);
        if e164.len() <= 1 + country.len() || !(7..=15).contains(&digits) {
            return Err(invalid());
        }
        if validation == PhoneValidation::Strict && !valid {
            return Err(invalid());
        }
        Ok(Self(e164))
    }

    /// Reads back a number that was stored already normalised.
    #[must_use]
    pub fn from_stored(e164: String) -> Self {
        Self(e164)
    }

    /// The E.164 text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The block of 10,000 numbers this one is in: the E.164 text without
    /// its last four digits (the key of `rate_limits.verification_per_prefix`).
    #[must_use]
    pub fn block(&self) -> &str {
        let end = self.0.len().saturating_sub(BLOCK_DIGITS).max(1);
        self.0.get(..end).unwrap_or(&self.0)
    }

    /// The country calling code, as `+1` or `+44` (the key of
    /// `rate_limits.verification_per_country`). A number that no longer
    /// parses (it cannot, it was parsed) shares one key with all such.
    #[must_use]
    pub fn country_key(&self) -> String {
        phonenumber::parse(None, &self.0).map_or_else(
            |_| "unknown".to_owned(),
            |n| format!("+{}", n.code().value()),
        )
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        write!(f, "Phone(+…{tail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_countries() {
        let p = Phone::parse("+1 415 999 0042", PhoneValidation::Parse).unwrap();
        assert_eq!(p.block(), "+1415999");
        assert_eq!(p.country_key(), "+1");
        let p = Phone::parse("+44 20 7946 0958", PhoneValidation::Parse).unwrap();
        assert_eq!(p.block(), "+44207946");
        assert_eq!(p.country_key(), "+44");
    }

    #[test]
    fn normalises_to_e164() {
        let p = Phone::parse("+1 (415) 555-0123", PhoneValidation::Strict).unwrap();
        assert_eq!(p.as_str(), "+14155550123");
        let p = Phone::parse("0044 20 7946 0958", PhoneValidation::Strict).unwrap();
        assert_eq!(p.as_str(), "+442079460958");
    }

    #[test]
    fn the_seed_number_parses_but_is_not_strictly_valid() {
        assert_eq!(
            Phone::parse("+1234567890", PhoneValidation::Parse)
                .unwrap()
                .as_str(),
            "+1234567890"
        );
        assert!(Phone::parse("+1234567890", PhoneValidation::Strict).is_err());
    }

    #[test]
    fn a_trunk_prefix_after_the_country_code_is_dropped() {
        for spelling in ["+44 (0)7700 900123", "+44 07700 900123", "+447700900123"] {
            assert_eq!(
                Phone::parse(spelling, PhoneValidation::Parse)
                    .unwrap()
                    .as_str(),
                "+447700900123",
                "{spelling}"
            );
        }
        assert_eq!(
            Phone::parse("+49 (0)30 1234567", PhoneValidation::Strict)
                .unwrap()
                .as_str(),
            "+49301234567"
        );
        // Italian numbers keep their leading zero.
        assert_eq!(
            Phone::parse("+39 06 1234 5678", PhoneValidation::Strict)
                .unwrap()
                .as_str(),
            "+390612345678"
        );
    }

    #[test]
    fn nothing_is_silently_dropped() {
        for bad in [
            "+14155550104\u{0}",
            "+1 415 555 0103 ext. 7",
            "+1 415 555 0103;ext=5",
            "+1 415 555 O103",
        ] {
            assert!(
                Phone::parse(bad, PhoneValidation::Parse).is_err(),
                "{bad:?} accepted"
            );
        }
        // Surrounding whitespace is fine.
        assert!(Phone::parse(" +14155550105\n", PhoneValidation::Parse).is_ok());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "+",
            "hello",
            "4155550123",
            "+999 123456",
            "+1",
            "+1 234",
            "+12345678901234567",
        ] {
            assert!(
                Phone::parse(bad, PhoneValidation::Parse).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn debug_redacts() {
        let p = Phone::parse("+14155550123", PhoneValidation::Parse).unwrap();
        assert_eq!(format!("{p:?}"), "Phone(+…23)");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Inputs near the grammar (digits and the allowed punctuation
        /// after `+` or `00`) and anything at all.
        fn input() -> impl Strategy<Value = String> {
            let near = proptest::collection::vec(
                prop_oneof![8 => (b'0'..=b'9').prop_map(char::from), 1 => proptest::sample::select(vec![' ', '-', '.', '(', ')', '/', '+'])],
                0..40,
            )
            .prop_flat_map(|body| {
                (proptest::sample::select(vec!["+", "00", "", "0"]), Just(body.into_iter().collect::<String>()))
            })
            .prop_map(|(lead, body)| format!("{lead}{body}"));
            prop_oneof![4 => near, 1 => any::<String>()]
        }

        proptest! {
            #[test]
            fn a_parsed_number_is_e164_and_parses_to_itself(raw in input(), strict in any::<bool>()) {
                let validation = if strict { PhoneValidation::Strict } else { PhoneValidation::Parse };
                if let Ok(phone) = Phone::parse(&raw, validation) {
                    let e164 = phone.as_str();
                    prop_assert!(e164.starts_with('+'), "{raw:?} -> {e164}");
                    prop_assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()), "{e164}");
                    prop_assert!((8..=16).contains(&e164.len()), "{e164}");
                    let again = Phone::parse(e164, validation).map(|p| p.as_str().to_owned());
                    prop_assert_eq!(again.as_deref(), Ok(e164));
                    prop_assert!(e164.starts_with(phone.block()));
                    prop_assert!(e164.starts_with(&phone.country_key()));
                    let shown = format!("{phone:?}");
                    prop_assert!(!shown.contains(&e164[1..e164.len() - 2]), "{}", shown);
                }
            }
        }
    }
}
