//! Snippets and script facts both engines' searches share: whether a text
//! is in a script written without spaces (searched by substring, not by
//! word), and snippets that mark what matched by byte offsets.

use std::ops::Range;

use crate::store::Snippet;

/// Characters of context around a match in a substring snippet.
const SUBSTRING_CONTEXT: usize = 40;

/// Whether the text has characters of scripts written without spaces.
#[must_use]
pub(crate) fn has_cjk(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(c,
            '\u{3040}'..='\u{30FF}'   // Hiragana, Katakana
            | '\u{3400}'..='\u{4DBF}' // CJK Extension A
            | '\u{4E00}'..='\u{9FFF}' // CJK Unified Ideographs
            | '\u{AC00}'..='\u{D7AF}' // Hangul syllables
            | '\u{F900}'..='\u{FAFF}' // CJK Compatibility Ideographs
            | '\u{20000}'..='\u{2FA1F}')
    })
}

/// Where `needle` first occurs in `hay` (as characters), ignoring case.
fn find_folded(hay: &[char], needle: &[char]) -> Option<Range<usize>> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let same = |a: char, b: char| a == b || a.to_lowercase().eq(b.to_lowercase());
    (0..=hay.len() - needle.len())
        .find(|&i| needle.iter().zip(&hay[i..]).all(|(&n, &h)| same(n, h)))
        .map(|i| i..i + needle.len())
}

/// A substring snippet (substring search has no FTS snippet): a bounded
/// window around the earliest occurrence of any needle, marked.
pub(crate) fn mark_substring(content: &str, needles: &[&str]) -> Snippet {
    let chars: Vec<char> = content.chars().collect();
    let found = needles
        .iter()
        .filter_map(|n| find_folded(&chars, &n.chars().collect::<Vec<_>>()))
        .min_by_key(|r| r.start);
    let Some(found) = found else {
        return Snippet {
            text: chars.iter().take(SUBSTRING_CONTEXT * 2).collect(),
            marks: Vec::new(),
        };
    };
    let from = found.start.saturating_sub(SUBSTRING_CONTEXT);
    let to = (found.end + SUBSTRING_CONTEXT).min(chars.len());
    let mut text = String::new();
    if from > 0 {
        text.push('…');
    }
    text.extend(&chars[from..found.start]);
    let start = text.len();
    text.extend(&chars[found.clone()]);
    let marks = std::iter::once(start..text.len()).collect();
    text.extend(&chars[found.end..to]);
    if to < chars.len() {
        text.push('…');
    }
    Snippet { text, marks }
}

/// A word snippet: a bounded window around the first word of `content`
/// that is one of `words` (or starts with one of `prefixes`), every such
/// word in it marked. Words are compared as the index folds them.
pub(crate) fn mark_words(content: &str, words: &[String], prefixes: &[String]) -> Snippet {
    let hit = |w: &str| {
        words.iter().any(|x| x == w) || prefixes.iter().any(|p| w.starts_with(p.as_str()))
    };
    let found: Vec<Range<usize>> = crate::search_query::index_words(content)
        .into_iter()
        .filter(|(w, _)| hit(w))
        .map(|(_, r)| r)
        .collect();
    let Some(first) = found.first() else {
        return mark_substring(content, &[]);
    };
    let from = floor_boundary(content, first.start.saturating_sub(SUBSTRING_CONTEXT * 2));
    let to = ceil_boundary(
        content,
        (first.end + SUBSTRING_CONTEXT * 2).min(content.len()),
    );
    let mut text = String::new();
    if from > 0 {
        text.push('…');
    }
    let offset = text.len();
    text.push_str(&content[from..to]);
    let marks = found
        .iter()
        .filter(|r| r.start >= from && r.end <= to)
        .map(|r| r.start - from + offset..r.end - from + offset)
        .collect();
    if to < content.len() {
        text.push('…');
    }
    Snippet { text, marks }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_is_recognised() {
        assert!(has_cjk("你好世界"));
        assert!(has_cjk("こんにちは"));
        assert!(has_cjk("안녕하세요"));
        assert!(!has_cjk("café"));
    }

    #[test]
    fn substrings_are_marked_with_context() {
        let s = mark_substring("我们明天去北京吧", &["北京"]);
        assert_eq!(s.text, "我们明天去北京吧");
        assert_eq!(&s.text[s.marks[0].clone()], "北京");
        // Case folds, and the earliest needle wins.
        let s = mark_substring("Hello WORLD", &["world", "hello"]);
        assert_eq!(&s.text[s.marks[0].clone()], "Hello");
    }

    #[test]
    fn words_are_marked_where_they_are_folded_alike() {
        let s = mark_words(
            "Un café, s'il vous plaît",
            &["cafe".into()],
            &["pla".into()],
        );
        let marked: Vec<&str> = s.marks.iter().map(|r| &s.text[r.clone()]).collect();
        assert_eq!(marked, ["café", "plaît"]);
    }
}
