//! jq expressions (with [jaq](https://github.com/01mf02/jaq)) for `transform` steps.
//!
//! An expression is compiled when its flow is loaded, so a syntax error or an unknown
//! function is a definition error, not a failed run. It runs on a JSON value and must
//! produce exactly one value (collect several with `[…]`). The jq standard library is
//! there, without `env` (it would show the worker's environment) and `now` (a run must
//! not depend on when it runs).
//!
//! A jq filter can loop forever (`def f: f; f`); the step's timeout then fails the step,
//! but the evaluation keeps a blocking thread busy until the worker stops.

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data::JustLut, unwrap_valr};
use jaq_json::Val;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The most values an evaluation reads before it says "more than one".
const MAX_OUTPUTS: usize = 2;

/// A compiled jq expression; its text is what it serializes to.
#[derive(Clone)]
pub struct Expr {
    code: String,
    filter: Arc<jaq_core::Filter<JustLut<Val>>>,
}

impl Expr {
    /// Compiles `code`.
    ///
    /// # Errors
    /// What is wrong with it: a syntax error, an undefined function or variable.
    pub fn compile(code: &str) -> Result<Expr, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !matches!(*name, "env" | "now"));
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(&arena, File { code, path: () })
            .map_err(|errs| format!("jq expression {code:?} does not parse: {errs:?}"))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| format!("jq expression {code:?} does not compile: {errs:?}"))?;
        Ok(Expr {
            code: code.to_owned(),
            filter: Arc::new(filter),
        })
    }

    /// Its text.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Runs it on `input`.
    ///
    /// # Errors
    /// The jq error (e.g. `cannot index number with "a"`), or that it produced no value
    /// or more than one, or a value that is not JSON.
    pub fn run(&self, input: &Value) -> Result<Value, String> {
        let bytes = serde_json::to_vec(input).map_err(|e| e.to_string())?;
        let val = jaq_json::read::parse_single(&bytes).map_err(|e| e.to_string())?;
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let outputs: Vec<Result<Val, String>> = self
            .filter
            .id
            .run((ctx, val))
            .map(unwrap_valr)
            .take(MAX_OUTPUTS)
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        match outputs.as_slice() {
            [] => Err(format!("jq expression {:?} produced no value", self.code)),
            [one] => {
                let v = one
                    .as_ref()
                    .map_err(|e| format!("jq expression {:?}: {e}", self.code))?;
                serde_json::from_str(&v.to_string()).map_err(|e| {
                    format!(
                        "jq expression {:?} produced a value that is not JSON: {e}",
                        self.code
                    )
                })
            }
            _ => Err(format!(
                "jq expression {:?} produced more than one value; collect them with [ … ]",
                self.code
            )),
        }
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
    }
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.code)
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.code)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Expr::compile(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expressions_compute_over_json_and_keep_key_order() {
        let e = Expr::compile("[.lines[] | .price * .qty] | add").unwrap();
        assert_eq!(
            e.run(&json!({"lines": [{"price": 2, "qty": 3}, {"price": 1.5, "qty": 2}]}))
                .unwrap(),
            json!(9.0)
        );
        let e = Expr::compile("{z: .a, a: .b, label: \"n=\\(.a)\"}").unwrap();
        let out = e.run(&json!({"a": 1, "b": "x"})).unwrap();
        assert_eq!(out.to_string(), r#"{"z":1,"a":"x","label":"n=1"}"#);
    }

    #[test]
    fn bad_expressions_and_results_are_clear_errors() {
        assert!(
            Expr::compile(".a |")
                .unwrap_err()
                .contains("does not parse")
        );
        assert!(
            Expr::compile("nosuchfn(1)")
                .unwrap_err()
                .contains("does not compile")
        );
        assert!(Expr::compile("env").is_err(), "env is not offered");
        assert!(Expr::compile("now").is_err(), "now is not offered");
        let many = Expr::compile(".[]")
            .unwrap()
            .run(&json!([1, 2]))
            .unwrap_err();
        assert!(many.contains("more than one"), "{many}");
        let none = Expr::compile("empty").unwrap().run(&json!(1)).unwrap_err();
        assert!(none.contains("no value"), "{none}");
        let err = Expr::compile(".a.b")
            .unwrap()
            .run(&json!({"a": 3}))
            .unwrap_err();
        assert!(err.contains("cannot"), "{err}");
    }

    #[test]
    fn expressions_serialize_as_their_text() {
        let e: Expr = serde_json::from_value(json!(".a + 1")).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), json!(".a + 1"));
        assert!(serde_json::from_value::<Expr>(json!(".a +")).is_err());
    }
}
