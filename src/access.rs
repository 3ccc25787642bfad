//! Which database roles may call which ML functions, on which endpoints and languages: the
//! `[[access]]` rules of the config file.
//!
//! Without rules every role may call everything (as today). With rules, a call is allowed when
//! some rule names the role (or `*`) and covers the function and its endpoint (for
//! `invoke_endpoint`) or language (for `detect_sentiment`); anything else is refused with
//! `42501` before a call is made, as a missing GRANT is on Aurora. The role is the startup
//! packet's `user`, which the database authenticates: a session whose authentication fails never
//! runs a statement.
//!
//! A rule covers the functions it lists; without `functions`, those its lists imply —
//! `endpoints` means `invoke_endpoint`, `languages` `detect_sentiment`, `models` the two Bedrock
//! functions; no list at all means every function. An empty or missing list of endpoints,
//! languages or models allows any. Names are exact, or a prefix followed by `*`.

use serde::Deserialize;

pub const DETECT_SENTIMENT: &str = "aws_comprehend.detect_sentiment";
pub const INVOKE_ENDPOINT: &str = "aws_sagemaker.invoke_endpoint";
pub const INVOKE_MODEL: &str = "aws_bedrock.invoke_model";
pub const INVOKE_MODEL_GET_EMBEDDINGS: &str = "aws_bedrock.invoke_model_get_embeddings";
/// Every function pgenrich evaluates.
pub const FUNCTIONS: [&str; 4] = [
    DETECT_SENTIMENT,
    INVOKE_ENDPOINT,
    INVOKE_MODEL,
    INVOKE_MODEL_GET_EMBEDDINGS,
];

/// One `[[access]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Database roles (the startup `user`), exact or `prefix*`; `*` for every role.
    pub roles: Vec<String>,
    #[serde(default)]
    pub functions: Vec<String>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub languages: Vec<String>,
    /// Bedrock model ids.
    #[serde(default)]
    pub models: Vec<String>,
}

/// The rules of a configuration, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// None: no rules configured, everything is allowed.
    rules: Option<Vec<Rule>>,
}

impl Rules {
    /// Checks `rules`: every rule names a role, and only the ML functions.
    pub fn new(rules: Option<Vec<Rule>>) -> Result<Rules, String> {
        for (i, rule) in rules.iter().flatten().enumerate() {
            if rule.roles.is_empty() {
                return Err(format!("[[access]] rule {}: `roles` is empty", i + 1));
            }
            for function in &rule.functions {
                if !FUNCTIONS.contains(&function.as_str()) {
                    return Err(format!(
                        "[[access]] rule {}: unknown function `{function}` (expected one of {})",
                        i + 1,
                        FUNCTIONS.join(", ")
                    ));
                }
            }
        }
        Ok(Rules { rules })
    }

    pub fn is_configured(&self) -> bool {
        self.rules.is_some()
    }

    /// What `role` may call.
    pub fn grant(&self, role: &str) -> Grant {
        match &self.rules {
            None => Grant::All,
            Some(rules) => Grant::Rules {
                role: role.to_owned(),
                rules: rules
                    .iter()
                    .filter(|r| r.roles.iter().any(|p| matches(p, role)))
                    .cloned()
                    .collect(),
            },
        }
    }
}

/// What one role may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    All,
    /// The rules that name the role.
    Rules {
        role: String,
        rules: Vec<Rule>,
    },
}

impl Grant {
    /// Whether `function` (its full name) may be called on `target` (endpoint or language).
    pub fn allows(&self, function: &str, target: &str) -> bool {
        let Grant::Rules { rules, .. } = self else {
            return true;
        };
        rules.iter().any(|rule| {
            let targets = match function {
                INVOKE_ENDPOINT => &rule.endpoints,
                DETECT_SENTIMENT => &rule.languages,
                _ => &rule.models,
            };
            let covered = if !rule.functions.is_empty() {
                rule.functions.iter().any(|f| f == function)
            } else if rule.endpoints.is_empty()
                && rule.languages.is_empty()
                && rule.models.is_empty()
            {
                true
            } else {
                // The lists given imply their functions.
                !targets.is_empty()
            };
            covered && (targets.is_empty() || targets.iter().any(|p| matches(p, target)))
        })
    }

    /// The role the rules were resolved for (None: no rules).
    pub fn role(&self) -> Option<&str> {
        match self {
            Grant::All => None,
            Grant::Rules { role, .. } => Some(role),
        }
    }
}

/// `pattern` is `*`, a name, or a prefix followed by `*` (also the role patterns of
/// `[[rate_limits]]`).
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(roles: &[&str], functions: &[&str], endpoints: &[&str], languages: &[&str]) -> Rule {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Rule {
            roles: owned(roles),
            functions: owned(functions),
            endpoints: owned(endpoints),
            languages: owned(languages),
            models: Vec::new(),
        }
    }

    #[test]
    fn model_lists_cover_the_bedrock_functions() {
        let mut bedrock = rule(&["app"], &[], &[], &[]);
        bedrock.models = vec!["amazon.titan-*".into()];
        let rules =
            Rules::new(Some(vec![bedrock, rule(&["app"], &[], &["fraud"], &[])])).expect("valid");
        let grant = rules.grant("app");
        assert!(grant.allows(INVOKE_MODEL, "amazon.titan-text-v1"));
        assert!(grant.allows(INVOKE_MODEL_GET_EMBEDDINGS, "amazon.titan-embed-text-v2:0"));
        assert!(!grant.allows(INVOKE_MODEL, "anthropic.claude-v2"));
        assert!(grant.allows(INVOKE_ENDPOINT, "fraud"));
        assert!(!grant.allows(DETECT_SENTIMENT, "en"), "no list implies it");
        // A rule without lists covers every function, Bedrock's too.
        let all = Rules::new(Some(vec![rule(&["*"], &[], &[], &[])])).expect("valid");
        assert!(all.grant("x").allows(INVOKE_MODEL, "any"));
        let named = Rules::new(Some(vec![rule(&["*"], &[INVOKE_MODEL], &[], &[])])).expect("valid");
        assert!(named.grant("x").allows(INVOKE_MODEL, "any"));
        assert!(!named.grant("x").allows(INVOKE_MODEL_GET_EMBEDDINGS, "any"));
    }

    #[test]
    fn without_rules_everything_is_allowed() {
        let rules = Rules::new(None).expect("valid");
        assert!(!rules.is_configured());
        assert!(rules.grant("anyone").allows(INVOKE_ENDPOINT, "x"));
    }

    #[test]
    fn rules_allow_only_what_they_name() {
        let rules = Rules::new(Some(vec![
            rule(&["analyst"], &[], &["fraud", "churn-*"], &[]),
            rule(&["analyst", "support*"], &[], &[], &["en", "de"]),
            rule(&["*"], &[DETECT_SENTIMENT], &[], &["fr"]),
            rule(&["admin"], &[], &[], &[]),
        ]))
        .expect("valid");
        let analyst = rules.grant("analyst");
        assert!(analyst.allows(INVOKE_ENDPOINT, "fraud"));
        assert!(analyst.allows(INVOKE_ENDPOINT, "churn-v2"));
        assert!(
            !analyst.allows(INVOKE_ENDPOINT, "fraudster"),
            "exact unless *"
        );
        assert!(analyst.allows(DETECT_SENTIMENT, "en"));
        assert!(analyst.allows(DETECT_SENTIMENT, "fr"), "the * rule");
        assert!(!analyst.allows(DETECT_SENTIMENT, "es"));
        let support = rules.grant("support-eu");
        assert!(support.allows(DETECT_SENTIMENT, "de"));
        assert!(
            !support.allows(INVOKE_ENDPOINT, "fraud"),
            "a languages-only rule does not cover invoke_endpoint"
        );
        let stranger = rules.grant("stranger");
        assert!(stranger.allows(DETECT_SENTIMENT, "fr"));
        assert!(!stranger.allows(DETECT_SENTIMENT, "en"));
        assert!(!stranger.allows(INVOKE_ENDPOINT, "fraud"));
        let admin = rules.grant("admin");
        assert!(admin.allows(INVOKE_ENDPOINT, "anything"));
        assert!(admin.allows(DETECT_SENTIMENT, "es"));
        assert_eq!(admin.role(), Some("admin"));
    }

    #[test]
    fn invalid_rules_are_refused() {
        assert!(Rules::new(Some(vec![rule(&[], &[], &[], &[])])).is_err());
        let error = Rules::new(Some(vec![rule(&["a"], &["aws_sagemaker.other"], &[], &[])]))
            .expect_err("unknown function");
        assert!(error.contains("aws_sagemaker.other"), "{error}");
    }
}
