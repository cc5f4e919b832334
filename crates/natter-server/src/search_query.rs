//! The message search query language, knowing no engine: what a person types
//! into the search box becomes a [`TextQuery`], which each store engine
//! compiles into its own syntax (SQLite FTS5 now, PostgreSQL later).
//!
//! Any plain text is a valid query that finds what it says: words are kept
//! as typed (`don't`, `e-mail`, `bob@example.com`) and the engine splits them
//! the way its index split the messages. Only operator syntax can be
//! malformed, and then [`parse`] says what is wrong in plain words.
//!
//! The syntax, as in web search engines:
//! - `tea coffee`: both words (AND is implicit; an explicit `AND` is allowed);
//! - `"green tea"`: the words next to each other, in order (a quote left
//!   open runs to the end of the query);
//! - `tea*`: words starting with `tea`;
//! - `tea OR coffee`: either (`OR` binds tighter than the implicit AND, so
//!   `milk tea OR coffee` is milk, and tea or coffee);
//! - `-milk` or `NOT milk`: without that word.
//!
//! Operators are upper case; `or`, `and` and `not` are ordinary words.
//! Punctuation between words is ignored, as the index ignores it.
//!
//! This module depends on nothing else in the crate.

use std::fmt;

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// A parsed message search: every group of `required` must match (a group
/// matches when any of its terms does), and no term of `excluded` may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextQuery {
    /// Groups joined by AND; each group's terms are joined by OR. Never empty,
    /// and no group is empty.
    pub required: Vec<Vec<Term>>,
    /// Terms a hit must not contain.
    pub excluded: Vec<Term>,
}

/// One word or phrase to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The text as typed, without the surrounding quotes, the `*` and (for a
    /// word) leading and trailing punctuation. It contains at least one
    /// letter or digit; a word contains no whitespace.
    pub text: String,
    /// Written in quotes: its words must appear together, in order.
    pub phrase: bool,
    /// Ends with `*`: its last word is a prefix.
    pub prefix: bool,
}

impl TextQuery {
    /// Every term, required and excluded.
    pub fn terms(&self) -> impl Iterator<Item = &Term> {
        self.required.iter().flatten().chain(&self.excluded)
    }
}

/// The bounds a query must keep (from `Limits`).
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Longest query, in characters.
    pub max_chars: usize,
    /// Most words and phrases in one query.
    pub max_terms: usize,
}

/// Why a query was refused. The messages are shown to users as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing but whitespace.
    #[error("`q` must not be empty.")]
    Empty,
    /// Longer than allowed.
    #[error("`q` must be at most {0} characters.")]
    TooLong(usize),
    /// Control characters (newlines, tabs, NUL…) have no place in a query.
    #[error("`q` must not contain control characters.")]
    ControlCharacter,
    /// More words and phrases than allowed.
    #[error("`q` may hold at most {0} words and phrases.")]
    TooManyTerms(usize),
    /// Only punctuation: nothing the index could hold.
    #[error("`q` has no words to search for; punctuation alone matches nothing.")]
    NoWords,
    /// Only `-word` / `NOT word`.
    #[error("`q` only excludes words (`-word`, `NOT word`); add a word to find.")]
    OnlyExclusions,
    /// `OR` or `AND` without a word on one side.
    #[error("`{0}` needs a word on each side, as in `tea {0} coffee`.")]
    LoneOperator(&'static str),
    /// `NOT` or `-` with nothing after it.
    #[error("`NOT` needs a word after it, as in `tea NOT milk`.")]
    NotWithoutWord,
    /// `-a OR b`: an exclusion cannot be one of several alternatives.
    #[error("`OR` cannot join an excluded word; exclude each word instead, as in `-tea -coffee`.")]
    ExcludedAlternative,
    /// A `*` anywhere but at the end of a word or phrase.
    #[error("`*` marks a prefix and must end a word, as in `hel*`.")]
    MisplacedStar,
}

/// Parses what a person typed.
///
/// # Errors
/// A [`QueryError`] naming the problem: the query is empty, too long, has
/// too many terms, or misuses an operator.
pub fn parse(input: &str, limits: QueryLimits) -> Result<TextQuery, QueryError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(QueryError::Empty);
    }
    if input.chars().count() > limits.max_chars {
        return Err(QueryError::TooLong(limits.max_chars));
    }
    if input.chars().any(char::is_control) {
        return Err(QueryError::ControlCharacter);
    }
    let tokens = lex(input)?;
    let query = group(tokens)?;
    if query.terms().count() > limits.max_terms {
        return Err(QueryError::TooManyTerms(limits.max_terms));
    }
    Ok(query)
}

/// Whether a character can be part of an indexed word: letters, digits and
/// private-use characters, as SQLite's unicode61 tokenizer counts them.
/// Everything else separates words.
#[must_use]
pub fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(c, '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{FFFFD}' | '\u{100000}'..='\u{10FFFD}')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Term(Term),
    And,
    Or,
    Not,
}

/// Splits the input into terms and operators. Words without any letter or
/// digit are dropped here: the index holds nothing they could match.
fn lex(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '"' {
            // A phrase, to the closing quote or, if there is none, to the end.
            let start = i + 1;
            let mut end = start;
            while end < chars.len() && chars[end] != '"' {
                end += 1;
            }
            let text: String = chars[start..end].iter().collect();
            i = (end + 1).min(chars.len());
            let mut prefix = false;
            while i < chars.len() && chars[i] == '*' {
                prefix = true;
                i += 1;
            }
            let text = text.trim().to_owned();
            if text.chars().any(is_word_char) {
                tokens.push(Token::Term(Term {
                    text,
                    phrase: true,
                    prefix,
                }));
            } else if prefix {
                return Err(QueryError::MisplacedStar);
            } else {
                dropped(&tokens)?;
            }
            continue;
        }
        // `-` right before a word or a quote excludes it; elsewhere it is
        // punctuation (`e-mail`, `well -- maybe`).
        if c == '-'
            && chars
                .get(i + 1)
                .is_some_and(|&n| n == '"' || is_word_char(n))
        {
            tokens.push(Token::Not);
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '"' {
            i += 1;
        }
        let raw: String = chars[start..i].iter().collect();
        match raw.as_str() {
            "AND" => tokens.push(Token::And),
            "OR" => tokens.push(Token::Or),
            "NOT" => tokens.push(Token::Not),
            _ => match word(&raw)? {
                Some(term) => tokens.push(Token::Term(term)),
                None => dropped(&tokens)?,
            },
        }
    }
    Ok(tokens)
}

/// Checks that dropping a word without letters or digits leaves no `NOT`
/// without its word (`NOT ?? tea` must not come to mean `NOT tea`).
fn dropped(tokens: &[Token]) -> Result<(), QueryError> {
    if tokens.last() == Some(&Token::Not) {
        return Err(QueryError::NotWithoutWord);
    }
    Ok(())
}

/// A word as typed: trailing `*`s make it a prefix; leading and trailing
/// punctuation goes. `None` when no letter or digit is left.
fn word(raw: &str) -> Result<Option<Term>, QueryError> {
    let stem = raw.trim_end_matches('*');
    let prefix = stem.len() < raw.len();
    if stem.contains('*') {
        return Err(QueryError::MisplacedStar);
    }
    let text = stem.trim_matches(|c: char| !is_word_char(c));
    if text.is_empty() {
        return if prefix {
            Err(QueryError::MisplacedStar)
        } else {
            Ok(None)
        };
    }
    Ok(Some(Term {
        text: text.to_owned(),
        // `AND,` is the word "and", not the operator; as a one-word phrase
        // it matches the same and prints back unambiguously.
        phrase: matches!(text, "AND" | "OR" | "NOT"),
        prefix,
    }))
}

/// Groups the tokens: `a OR b` chains become one group, `NOT x` an
/// exclusion, and `AND` may stand between any two items.
fn group(tokens: Vec<Token>) -> Result<TextQuery, QueryError> {
    let mut required: Vec<Vec<Term>> = Vec::new();
    let mut excluded = Vec::new();
    let mut tokens = tokens.into_iter().peekable();
    // Whether an item came before (so an `AND` has a left side).
    let mut after_item = false;
    while let Some(token) = tokens.next() {
        match token {
            Token::Term(first) => {
                let mut alternatives = vec![first];
                while tokens.next_if_eq(&Token::Or).is_some() {
                    match tokens.next() {
                        Some(Token::Term(t)) => alternatives.push(t),
                        Some(Token::Not) => return Err(QueryError::ExcludedAlternative),
                        _ => return Err(QueryError::LoneOperator("OR")),
                    }
                }
                required.push(alternatives);
                after_item = true;
            }
            Token::Not => {
                let Some(Token::Term(t)) = tokens.next() else {
                    return Err(QueryError::NotWithoutWord);
                };
                if tokens.peek() == Some(&Token::Or) {
                    return Err(QueryError::ExcludedAlternative);
                }
                excluded.push(t);
                after_item = true;
            }
            Token::And => {
                let right = matches!(tokens.peek(), Some(Token::Term(_) | Token::Not));
                if !after_item || !right {
                    return Err(QueryError::LoneOperator("AND"));
                }
                after_item = false;
            }
            Token::Or => return Err(QueryError::LoneOperator("OR")),
        }
    }
    if required.is_empty() {
        return Err(if excluded.is_empty() {
            QueryError::NoWords
        } else {
            QueryError::OnlyExclusions
        });
    }
    Ok(TextQuery { required, excluded })
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quotes inside a phrase cannot be written; they are punctuation
        // to the index anyway, so a space stands in for them.
        if self.phrase {
            write!(f, "\"{}\"", self.text.replace('"', " "))?;
        } else {
            f.write_str(&self.text)?;
        }
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

/// The query in this module's syntax, such that parsing it again gives the
/// same query.
impl fmt::Display for TextQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let term = Term::to_string;
        let mut parts: Vec<String> = self
            .required
            .iter()
            .map(|g| g.iter().map(term).collect::<Vec<_>>().join(" OR "))
            .collect();
        parts.extend(self.excluded.iter().map(|t| format!("-{}", term(t))));
        f.write_str(&parts.join(" "))
    }
}

/// The words of a text as the search index keeps them, for engines that
/// split text themselves (PostgreSQL): runs of letters and digits, lower
/// case, accents removed, as SQLite's FTS5 `unicode61 remove_diacritics 2`
/// tokenizer splits the messages of the embedded engine, so `e-mail` is
/// `e` and `mail`, `don't` is `don` and `t`, `bob@example.com` is three
/// words, and `Café` is `cafe`. Each word comes with where it is in `text`
/// (a byte range), for marking snippets.
#[must_use]
pub fn index_words(text: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let mut words = Vec::new();
    let mut start = None;
    let flush = |from: usize, to: usize, words: &mut Vec<(String, std::ops::Range<usize>)>| {
        let folded: String = text[from..to]
            .nfd()
            .filter(|c| !is_combining_mark(*c))
            .flat_map(char::to_lowercase)
            .collect();
        if !folded.is_empty() {
            words.push((folded, from..to));
        }
    };
    for (at, c) in text.char_indices() {
        // Combining marks belong to the word they follow.
        let in_word = c.is_alphanumeric() || (start.is_some() && is_combining_mark(c));
        match (in_word, start) {
            (true, None) => start = Some(at),
            (false, Some(from)) => {
                flush(from, at, &mut words);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        flush(from, text.len(), &mut words);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_words_split_and_fold_as_the_embedded_index_does() {
        let words = |t: &str| {
            index_words(t)
                .into_iter()
                .map(|(w, _)| w)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            words("don't e-mail bob@example.com"),
            ["don", "t", "e", "mail", "bob", "example", "com"]
        );
        assert_eq!(words("Café CRÈME naïve"), ["cafe", "creme", "naive"]);
        assert_eq!(words("how are you?"), ["how", "are", "you"]);
        assert_eq!(words("我们明天去北京吧 ok"), ["我们明天去北京吧", "ok"]);
        assert_eq!(words("  ,,, "), Vec::<String>::new());
        let text = "Hé, là";
        let ranges: Vec<&str> = index_words(text)
            .into_iter()
            .map(|(_, r)| &text[r])
            .collect();
        assert_eq!(ranges, ["Hé", "là"]);
    }

    const LIMITS: QueryLimits = QueryLimits {
        max_chars: 256,
        max_terms: 16,
    };

    fn word(text: &str) -> Term {
        Term {
            text: text.to_owned(),
            phrase: false,
            prefix: false,
        }
    }

    fn ok(input: &str) -> TextQuery {
        parse(input, LIMITS).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    fn err(input: &str) -> QueryError {
        parse(input, LIMITS).expect_err(input)
    }

    #[test]
    fn plain_text_is_a_query_of_its_words() {
        let q = ok("Hello, how are you?");
        assert_eq!(
            q.required,
            vec![
                vec![word("Hello")],
                vec![word("how")],
                vec![word("are")],
                vec![word("you")]
            ]
        );
        assert!(q.excluded.is_empty());
        // Inner punctuation stays: the engine splits as its index did.
        assert_eq!(ok("don't").required, vec![vec![word("don't")]]);
        assert_eq!(ok("e-mail").required, vec![vec![word("e-mail")]]);
        assert_eq!(
            ok("bob@example.com").required,
            vec![vec![word("bob@example.com")]]
        );
        // Lower-case operators are words.
        assert_eq!(ok("rock and roll").required.len(), 3);
        assert_eq!(ok("(hello)").required, vec![vec![word("hello")]]);
    }

    #[test]
    fn operators() {
        let q = ok("milk tea OR coffee -sugar NOT honey");
        assert_eq!(
            q.required,
            vec![vec![word("milk")], vec![word("tea"), word("coffee")]]
        );
        assert_eq!(q.excluded, vec![word("sugar"), word("honey")]);
        assert_eq!(ok("tea AND coffee"), ok("tea coffee"));
        let q = ok("\"green tea\"* hel*");
        assert_eq!(
            q.required,
            vec![
                vec![Term {
                    text: "green tea".to_owned(),
                    phrase: true,
                    prefix: true
                }],
                vec![Term {
                    text: "hel".to_owned(),
                    phrase: false,
                    prefix: true
                }]
            ]
        );
        assert_eq!(ok("-\"a b\" c").excluded[0].text, "a b");
        // A `-` that starts no word is punctuation.
        assert_eq!(ok("well -- maybe").required.len(), 2);
    }

    #[test]
    fn an_open_quote_runs_to_the_end() {
        let q = ok("\"hello there");
        assert_eq!(q.required[0][0].text, "hello there");
        assert!(q.required[0][0].phrase);
    }

    #[test]
    fn misused_operators_are_named() {
        assert_eq!(err("*"), QueryError::MisplacedStar);
        assert_eq!(err("* hello"), QueryError::MisplacedStar);
        assert_eq!(err("*hello"), QueryError::MisplacedStar);
        assert_eq!(err("he*lo"), QueryError::MisplacedStar);
        assert_eq!(err("\"\"*"), QueryError::MisplacedStar);
        assert_eq!(err("NOT"), QueryError::NotWithoutWord);
        assert_eq!(err("tea NOT"), QueryError::NotWithoutWord);
        assert_eq!(err("NOT ?? tea"), QueryError::NotWithoutWord);
        assert_eq!(err("tea -\"\" milk"), QueryError::NotWithoutWord);
        assert_eq!(err("AND"), QueryError::LoneOperator("AND"));
        assert_eq!(err("tea AND"), QueryError::LoneOperator("AND"));
        assert_eq!(err("AND tea"), QueryError::LoneOperator("AND"));
        assert_eq!(err("OR"), QueryError::LoneOperator("OR"));
        assert_eq!(err("tea OR"), QueryError::LoneOperator("OR"));
        assert_eq!(err("OR tea"), QueryError::LoneOperator("OR"));
        assert_eq!(err("-tea"), QueryError::OnlyExclusions);
        assert_eq!(err("a -b OR c"), QueryError::ExcludedAlternative);
        assert_eq!(err("a OR -b"), QueryError::ExcludedAlternative);
        assert_eq!(err("?!"), QueryError::NoWords);
        assert_eq!(err("("), QueryError::NoWords);
        assert_eq!(err("\""), QueryError::NoWords);
        assert_eq!(err("   "), QueryError::Empty);
        assert_eq!(err("a\nb"), QueryError::ControlCharacter);
        // Every message is plain words for a person, never engine text.
        for e in [err("*"), err("NOT"), err("OR")] {
            assert!(!e.to_string().contains("fts5"), "{e}");
        }
    }

    #[test]
    fn length_and_term_limits_hold_at_n() {
        let limits = QueryLimits {
            max_chars: 10,
            max_terms: 3,
        };
        assert!(parse("abcdefghij", limits).is_ok());
        assert_eq!(parse("abcdefghijk", limits), Err(QueryError::TooLong(10)));
        // Characters, not bytes.
        assert!(parse("éééééééééé", limits).is_ok());
        assert!(parse("a b -c", limits).is_ok());
        assert_eq!(parse("a b c d", limits), Err(QueryError::TooManyTerms(3)));
        assert_eq!(parse("a b -c d", limits), Err(QueryError::TooManyTerms(3)));
    }

    #[test]
    fn display_parses_back() {
        for input in [
            "a b",
            "\"x y\"* z*",
            "a OR b -c",
            "\"AND\" OR x",
            "don't e-mail",
        ] {
            let q = ok(input);
            assert_eq!(ok(&q.to_string()), q, "{input}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        const LIMITS: QueryLimits = QueryLimits {
            max_chars: 256,
            max_terms: 64,
        };

        proptest! {
            #[test]
            fn never_panics(input in "\\PC{0,80}") {
                let _ = parse(&input, LIMITS);
            }

            #[test]
            fn never_panics_on_operator_soup(
                input in "( |\"|\\*|-|OR|AND|NOT|a|é|北|,|'){0,40}"
            ) {
                let _ = parse(&input, LIMITS);
            }

            #[test]
            fn plain_words_round_trip(words in prop::collection::vec("[a-z0-9]{1,12}", 1..10)) {
                let q = parse(&words.join(" "), LIMITS).unwrap();
                let expected: Vec<Vec<Term>> = words.iter().map(|w| vec![Term {
                    text: w.clone(), phrase: false, prefix: false,
                }]).collect();
                prop_assert_eq!(q.required, expected);
                prop_assert!(q.excluded.is_empty());
            }

            #[test]
            fn accepted_queries_print_and_parse_back(
                input in "( |\"|\\*|-|OR|AND|NOT|ab|é|北|,|'|x\\*){0,30}"
            ) {
                if let Ok(q) = parse(&input, LIMITS) {
                    let printed = q.to_string();
                    prop_assert_eq!(parse(&printed, LIMITS), Ok(q), "printed as {}", printed);
                }
            }
        }
    }
}
