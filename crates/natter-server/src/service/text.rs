//! What a name may contain. Names (display names, group names, device
//! names, file names, about texts) are shown to other users, so characters
//! that render as nothing must not let one user pose as another or hide a
//! second meaning: every Default_Ignorable_Code_Point and every format
//! character (Cf) is refused, using the Unicode Character Database as
//! `icu_properties` ships it (already compiled for URL handling), except in
//! the few places where they are part of visible text:
//! - ZWJ (U+200D) between emoji (👩‍💻, 🏳️‍🌈) and ZWJ/ZWNJ (U+200C) between
//!   letters of the scripts that need them (Persian, Indic, Sinhala…);
//! - emoji presentation selectors (U+FE0E, U+FE0F) after an emoji (❤️, 1️⃣);
//! - ideographic variation selectors after a Han character (Japanese names
//!   use them for variant kanji), Mongolian free variation selectors after
//!   Mongolian letters;
//! - tag characters only in an emoji tag sequence: 🏴 + tags + CANCEL TAG
//!   (the flags of England, Scotland, Wales).
//!
//! Direction marks and overrides are refused everywhere: they can reorder
//! the text around them, and a name in one script does not need them.
//!
//! Depends on nothing else in the crate.

use icu_properties::props::{
    DefaultIgnorableCodePoint, Emoji, EmojiModifier, ExtendedPictographic, GeneralCategory, Script,
};
use icu_properties::{CodePointMapData, CodePointSetData};

const ZWNJ: char = '\u{200C}';
const ZWJ: char = '\u{200D}';
const BLACK_FLAG: char = '\u{1F3F4}';
const CANCEL_TAG: char = '\u{E007F}';
/// Renders as an empty cell; used to make names that look blank.
const BRAILLE_BLANK: char = '\u{2800}';

/// Scripts whose spelling uses ZWJ or ZWNJ between letters.
const JOINING_SCRIPTS: [Script; 18] = [
    Script::Arabic,
    Script::Syriac,
    Script::Nko,
    Script::Mandaic,
    Script::Devanagari,
    Script::Bengali,
    Script::Gurmukhi,
    Script::Gujarati,
    Script::Oriya,
    Script::Tamil,
    Script::Telugu,
    Script::Kannada,
    Script::Malayalam,
    Script::Sinhala,
    Script::Mongolian,
    Script::Khmer,
    Script::Myanmar,
    Script::Tibetan,
];

/// Why a text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hidden {
    /// A control character or a line or paragraph separator.
    Control(char),
    /// A character that renders as nothing, outside the contexts above.
    Invisible(char),
}

fn general_category(c: char) -> GeneralCategory {
    CodePointMapData::<GeneralCategory>::new().get(c)
}

fn script(c: char) -> Script {
    CodePointMapData::<Script>::new().get(c)
}

/// Default_Ignorable_Code_Point or a format character: renders as nothing
/// (or, for the few visible Cf characters, is no part of a name).
fn ignorable(c: char) -> bool {
    CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
        || general_category(c) == GeneralCategory::Format
}

fn is_tag_spec(c: char) -> bool {
    ('\u{E0020}'..='\u{E007E}').contains(&c)
}

fn emoji_join(prev: Option<char>, next: Option<char>) -> bool {
    let pictographic = |c: char| CodePointSetData::new::<ExtendedPictographic>().contains(c);
    prev.is_some_and(|p| {
        p == '\u{FE0F}' || pictographic(p) || CodePointSetData::new::<EmojiModifier>().contains(p)
    }) && next.is_some_and(pictographic)
}

fn script_join(prev: Option<char>, next: Option<char>) -> bool {
    let (Some(prev), Some(next)) = (prev, next) else {
        return false;
    };
    let joining = |c: char| JOINING_SCRIPTS.contains(&script(c));
    // A vowel sign or virama before the joiner is often of script Inherited.
    joining(next) && (joining(prev) || script(prev) == Script::Inherited) && !ignorable(prev)
}

/// Whether the ignorable `c`, between `prev` and `next`, is part of visible text.
fn allowed_here(c: char, prev: Option<char>, next: Option<char>) -> bool {
    match c {
        ZWJ => emoji_join(prev, next) || script_join(prev, next),
        ZWNJ => script_join(prev, next),
        '\u{FE0E}' | '\u{FE0F}' => {
            prev.is_some_and(|p| CodePointSetData::new::<Emoji>().contains(p))
        }
        '\u{E0100}'..='\u{E01EF}' => prev.is_some_and(|p| script(p) == Script::Han),
        '\u{180B}'..='\u{180D}' | '\u{180F}' => {
            prev.is_some_and(|p| script(p) == Script::Mongolian)
        }
        _ => false,
    }
}

/// The first character of `text` that may not be in a name, if any.
pub(crate) fn find_hidden(text: &str) -> Option<Hidden> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if c.is_control()
            || matches!(
                general_category(c),
                GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
            )
        {
            return Some(Hidden::Control(c));
        }
        if c == BLACK_FLAG {
            // An emoji tag sequence: tag characters closed by CANCEL TAG.
            let tags = chars[i + 1..]
                .iter()
                .take_while(|t| is_tag_spec(**t))
                .count();
            if tags > 0 {
                let end = i + 1 + tags;
                match chars.get(end) {
                    Some(&CANCEL_TAG) => {
                        i = end + 1;
                        continue;
                    }
                    _ => return Some(Hidden::Invisible(chars[i + 1])),
                }
            }
        }
        let prev = i.checked_sub(1).and_then(|p| chars.get(p).copied());
        let next = chars.get(i + 1).copied();
        if ignorable(c) && !allowed_here(c, prev, next) {
            return Some(Hidden::Invisible(c));
        }
        i += 1;
    }
    None
}

/// Whether `text` shows anything: a character that is not a space, not
/// ignorable, not a lone mark and not the blank Braille pattern.
pub(crate) fn has_visible(text: &str) -> bool {
    text.chars().any(|c| {
        !c.is_whitespace()
            && c != BRAILLE_BLANK
            && !ignorable(c)
            && !matches!(
                general_category(c),
                GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_filler_characters_are_found() {
        for text in [
            "Team\u{206A}",
            "Team\u{E0041}\u{E0042}",
            "\u{3164}\u{3164}",
            "Bob\u{206F}",
            "Bob\u{E0062}",
            "\u{3164}",
            "\u{115F}Bob",
            "Bob\u{FFA0}",
            "Al\u{00AD}ice",
            "a\u{200B}b",
            "a\u{202E}b",
            "\u{200F}שלום",
            "a\u{2066}b",
            "Bo\u{200D}b",
            "Bob\u{200D}",
            "\u{200D}👩",
            "Bo\u{200C}b",
            "Bob\u{FE0F}",
            "Bo\u{FE00}b",
            "Bob\u{E0100}",
            "Bob\u{034F}",
            "🏴\u{E0067}\u{E0062}",
            "\u{1D173}music",
        ] {
            assert!(
                matches!(find_hidden(text), Some(Hidden::Invisible(_))),
                "{text:?} was accepted"
            );
        }
        assert!(matches!(
            find_hidden("a\u{2028}b"),
            Some(Hidden::Control('\u{2028}'))
        ));
        assert!(matches!(find_hidden("a\u{7}b"), Some(Hidden::Control(_))));
    }

    #[test]
    fn ordinary_names_in_every_script_are_accepted() {
        for text in [
            "don't",
            "Don’t",
            "e-mail",
            "O'Brien-Smith Jr.",
            "👩\u{200D}👩\u{200D}👧",
            "👩🏽\u{200D}💻",
            "🏳\u{FE0F}\u{200D}🌈",
            "👩\u{200D}❤\u{FE0F}\u{200D}👨",
            "❤\u{FE0F}",
            "1\u{FE0F}\u{20E3}",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F} fan",
            "🇯🇵",
            "张伟",
            "葛\u{E0100}城",
            "山田 太郎",
            "김민준",
            "محمد",
            "می\u{200C}خواهم",
            "क्\u{200D}ष",
            "ශ්\u{200D}රී",
            "שָׁלוֹם",
            "Ελένη",
            "Дмитрий",
            "Zoë Ångström",
        ] {
            assert_eq!(find_hidden(text), None, "{text:?} was refused");
            assert!(has_visible(text), "{text:?}");
        }
    }

    #[test]
    fn blank_looking_names_show_nothing() {
        for text in ["", "   ", "\u{2800}", "\u{0301}", "\u{3000}"] {
            assert!(!has_visible(text), "{text:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn checking_never_panics(text in any::<String>()) {
                let _ = find_hidden(&text);
                let _ = has_visible(&text);
            }

            #[test]
            fn an_invisible_character_anywhere_is_found(
                text in "[a-zA-Z0-9 ]{0,12}",
                at in any::<prop::sample::Index>(),
                hidden in proptest::sample::select(vec!['\u{206A}', '\u{200B}', '\u{202E}', '\u{3164}', '\u{E0041}', '\u{FEFF}', '\u{00AD}', '\u{2066}']),
            ) {
                let mut chars: Vec<char> = text.chars().collect();
                let i = at.index(chars.len() + 1);
                chars.insert(i, hidden);
                let text: String = chars.into_iter().collect();
                prop_assert!(find_hidden(&text).is_some(), "{text:?}");
            }
        }
    }
}
