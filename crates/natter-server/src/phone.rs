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
        if trimmed.chars().count() > MAX_INPUT_CHARS
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
        let national = number.national().value();
        // E.164 caps a number at 15 digits including the country code.
        let e164 = number.format().mode(Mode::E164).to_string();
        let digits = e164.len().saturating_sub(1);
        if national == 0 || !(7..=15).contains(&digits) {
            return Err(invalid());
        }
        if validation == PhoneValidation::Strict && !phonenumber::is_valid(&number) {
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
}
