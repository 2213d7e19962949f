//! Property tests of the subject and name parsers (`weft_bus::subject`, DESIGN §2):
//! each of [`Prefix`], [`EventType`], [`EventPattern`], [`ServiceName`] and [`Target`]
//! accepts a string iff it matches the documented grammar, and a rejection names the
//! bad token. The oracle is a regular expression per grammar, written from DESIGN §2,
//! not from the parsers; pattern matching is checked against a regular expression
//! built from the pattern.

use std::sync::LazyLock;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use regex::Regex;
use weft_bus::subject::{Prefix, ServiceName, SubjectError, Subjects};
use weft_bus::{EventPattern, EventType, Target};

const TOKEN: &str = "[A-Za-z0-9_-]+";

fn grammar(re: &str) -> Regex {
    Regex::new(&format!("^(?:{})$", re.replace("TOKEN", TOKEN))).unwrap()
}

static ONE_TOKEN: LazyLock<Regex> = LazyLock::new(|| grammar("TOKEN"));
static DOTTED: LazyLock<Regex> = LazyLock::new(|| grammar(r"TOKEN(\.TOKEN)*"));
static TARGET: LazyLock<Regex> = LazyLock::new(|| grammar(r"TOKEN(\.TOKEN)?"));
static PATTERN: LazyLock<Regex> = LazyLock::new(|| grammar(r"(TOKEN|\*)(\.(TOKEN|\*))*(\.>)?|>"));

/// Strings dense in what the grammars care about: token characters, dots, wildcards,
/// spaces, non-ASCII letters and control characters; plus arbitrary Unicode.
fn candidate() -> impl Strategy<Value = String> {
    let interesting = select(vec![
        'a', 'Z', '7', '_', '-', '.', '.', '.', '*', '>', ' ', 'é', 'ß', '\t', '\n', '\0', '/',
        '$', '\u{200b}',
    ]);
    prop_oneof![
        vec(interesting, 0..10).prop_map(String::from_iter),
        // Mostly valid: tokens and wildcards joined by dots.
        vec(
            prop_oneof![
                "[A-Za-z0-9_-]{1,4}",
                Just("*".into()),
                Just(">".into()),
                Just(String::new())
            ],
            1..5
        )
        .prop_map(|t| t.join(".")),
        any::<String>(),
    ]
}

/// The tokens of `s` that are not `[A-Za-z0-9_-]+` (wildcards count as bad unless
/// `wildcards`), in the form a rejection names them.
fn bad_tokens(s: &str, wildcards: bool) -> Vec<String> {
    let tokens: Vec<&str> = s.split('.').collect();
    tokens
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            let wild = **t == "*" || (**t == ">" && *i == tokens.len() - 1);
            !(ONE_TOKEN.is_match(t) || (wildcards && wild))
        })
        .map(|(_, t)| format!("{t:?}"))
        .collect()
}

/// Checks a rejection: it names `what` and the whole input, and its reason names one
/// of the bad tokens (an empty token as such), or is one of the `rules` the grammar has
/// beyond tokens.
fn check_rejection(
    err: &SubjectError,
    what: &str,
    input: &str,
    wildcards: bool,
    rules: &[&str],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.what, what);
    prop_assert_eq!(&err.input, input);
    let bad = bad_tokens(input, wildcards);
    let named = bad.iter().any(|t| {
        if t == "\"\"" {
            err.reason.contains("empty token")
        } else {
            err.reason.contains(t.as_str())
        }
    });
    let rule = rules.iter().any(|r| err.reason.contains(r));
    prop_assert!(
        named || rule,
        "{err} names none of {bad:?} nor a rule {rules:?}"
    );
    prop_assert!(err.to_string().contains(what), "{err}");
    Ok(())
}

proptest! {
    #[test]
    fn event_types_are_dotted_tokens(s in candidate()) {
        match s.parse::<EventType>() {
            Ok(t) => {
                prop_assert!(DOTTED.is_match(&s), "{s:?} accepted");
                prop_assert_eq!(t.as_str(), s.as_str());
                prop_assert_eq!(t.to_string(), s.clone());
            }
            Err(e) => {
                prop_assert!(!DOTTED.is_match(&s), "{s:?} refused: {e}");
                check_rejection(&e, "event type", &s, false, &[])?;
            }
        }
        // serde agrees with FromStr.
        let via_serde = serde_json::from_value::<EventType>(serde_json::json!(s));
        prop_assert_eq!(via_serde.is_ok(), DOTTED.is_match(&s));
        prop_assert_eq!(weft_bus::subject::validate_event_type(&s).is_ok(), DOTTED.is_match(&s));
    }

    #[test]
    fn single_token_names_are_one_token(s in candidate()) {
        let accepted = ONE_TOKEN.is_match(&s);
        match s.parse::<ServiceName>() {
            Ok(n) => {
                prop_assert!(accepted, "{s:?} accepted as a service name");
                prop_assert_eq!(n.as_str(), s.as_str());
            }
            Err(e) => {
                prop_assert!(!accepted, "{s:?} refused: {e}");
                // A dot makes two tokens; the whole input is named as the bad token.
                prop_assert_eq!(e.what, "service name");
                prop_assert!(e.reason.contains(&format!("{s:?}")) || e.reason.contains("empty token"), "{e}");
            }
        }
        match s.parse::<Prefix>() {
            Ok(p) => {
                prop_assert!(accepted, "{s:?} accepted as a prefix");
                prop_assert_eq!(p.as_str(), s.as_str());
            }
            Err(e) => {
                prop_assert!(!accepted, "{s:?} refused: {e}");
                prop_assert_eq!(e.what, "prefix");
            }
        }
        prop_assert_eq!(serde_json::from_value::<ServiceName>(serde_json::json!(s)).is_ok(), accepted);
        prop_assert_eq!(serde_json::from_value::<Prefix>(serde_json::json!(s)).is_ok(), accepted);
    }

    #[test]
    fn targets_are_one_or_two_tokens(s in candidate()) {
        match s.parse::<Target>() {
            Ok(t) => {
                prop_assert!(TARGET.is_match(&s), "{s:?} accepted");
                prop_assert_eq!(t.to_string(), s.clone());
                let (service, endpoint) = match s.split_once('.') {
                    Some((a, b)) => (a, Some(b)),
                    None => (s.as_str(), None),
                };
                prop_assert_eq!(t.service.as_str(), service);
                prop_assert_eq!(t.endpoint.as_deref(), endpoint);
                // The invoke subject is the target under the prefix, token for token.
                let subject = Subjects::new(Prefix::default()).invoke(&t);
                prop_assert_eq!(subject, format!("weft.invoke.{s}"));
            }
            Err(e) => {
                prop_assert!(!TARGET.is_match(&s), "{s:?} refused: {e}");
                check_rejection(&e, "target", &s, false, &["at most two tokens"])?;
            }
        }
        prop_assert_eq!(serde_json::from_value::<Target>(serde_json::json!(s)).is_ok(), TARGET.is_match(&s));
    }

    #[test]
    fn patterns_allow_wildcards_only_as_whole_tokens(s in candidate()) {
        match s.parse::<EventPattern>() {
            Ok(p) => {
                prop_assert!(PATTERN.is_match(&s), "{s:?} accepted");
                prop_assert_eq!(p.as_str(), s.as_str());
            }
            Err(e) => {
                prop_assert!(!PATTERN.is_match(&s), "{s:?} refused: {e}");
                check_rejection(&e, "event pattern", &s, true, &["may only be the last token"])?;
            }
        }
        prop_assert_eq!(serde_json::from_value::<EventPattern>(serde_json::json!(s)).is_ok(), PATTERN.is_match(&s));
    }

    #[test]
    fn patterns_match_like_nats_wildcards(
        pattern in vec(prop_oneof!["[ab]", Just("*".to_owned())], 1..4)
            .prop_flat_map(|t| (Just(t), any::<bool>()))
            .prop_map(|(mut t, tail)| { if tail { t.push(">".into()) } t.join(".") }),
        event_type in vec("[ab]", 1..6).prop_map(|t| t.join(".")),
    ) {
        // `*` is exactly one token, `>` one or more, anything else itself.
        let re: Vec<String> = pattern
            .split('.')
            .map(|t| match t {
                "*" => "[^.]+".to_owned(),
                ">" => r"[^.]+(\.[^.]+)*".to_owned(),
                t => regex::escape(t),
            })
            .collect();
        let re = Regex::new(&format!("^{}$", re.join(r"\."))).unwrap();
        let p: EventPattern = pattern.parse().unwrap();
        let t: EventType = event_type.parse().unwrap();
        prop_assert_eq!(p.matches(&t), re.is_match(&event_type), "{} against {}", pattern, event_type);
        // An event type is a pattern matching exactly itself.
        prop_assert!(EventPattern::from(t.clone()).matches(&t));
    }

    #[test]
    fn event_subjects_give_back_their_event_type(
        prefix in "[A-Za-z0-9_-]{1,6}",
        t in "[A-Za-z0-9_-]{1,5}(\\.[A-Za-z0-9_-]{1,5}){0,3}",
        consumer in "[A-Za-z0-9_-]{1,6}",
    ) {
        let s = Subjects::new(prefix.parse().unwrap());
        let t: EventType = t.parse().unwrap();
        prop_assert_eq!(s.event_type_of(&s.events(&t)), Some(t.clone()));
        prop_assert_eq!(s.event_type_of(&s.replay(&consumer, &t)), Some(t.clone()));
        prop_assert_eq!(s.event_type_of(&s.dlq(&t)), None);
    }
}
