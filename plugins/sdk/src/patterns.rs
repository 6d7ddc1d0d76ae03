//! Glob patterns over names: refs (`refs/heads/release/*`) and the names
//! people type (actors: `*[bot]`, `Renovate*`).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A set of glob patterns; a name matches when any pattern matches all of
/// it. `*` and `?` match `/` too (`refs/heads/*` covers
/// `refs/heads/team/x`), `[abc]` and `{a,b}` work as in shells.
#[derive(Debug, Clone)]
pub struct Patterns {
    set: GlobSet,
    patterns: Vec<String>,
}

impl Patterns {
    /// Case-sensitive patterns (ref names are).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        Self::build(patterns, false)
    }

    /// Patterns for names people type (display names): case is ignored and
    /// only `*` and `?` are wildcards, so `*[bot]` means a name ending in
    /// `[bot]` (as a glob it would mean a name ending in b, o or t).
    pub fn wildcards<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        Self::build(patterns, true)
    }

    fn build<S: AsRef<str>>(patterns: &[S], wildcards_only: bool) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            let glob = if wildcards_only {
                only_wildcards(pattern)
            } else {
                pattern.to_string()
            };
            let glob = GlobBuilder::new(&glob)
                .case_insensitive(wildcards_only)
                .backslash_escape(!wildcards_only)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("bad pattern {pattern:?}: {}", e.kind()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            set,
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The first pattern (as written) that matches `name`.
    pub fn matching(&self, name: &str) -> Option<&str> {
        self.set
            .matches(name)
            .first()
            .map(|&at| self.patterns[at].as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// `pattern` as a glob in which only `*` and `?` are special.
fn only_wildcards(pattern: &str) -> String {
    let mut glob = String::with_capacity(pattern.len());
    let mut literal = [0u8; 4];
    for c in pattern.chars() {
        match c {
            '*' | '?' => glob.push(c),
            c => glob.push_str(&globset::escape(c.encode_utf8(&mut literal))),
        }
    }
    glob
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_match_across_slashes_and_case_counts() {
        let p = Patterns::new(&["refs/heads/wip/*", "refs/tags/v1.*"]).unwrap();
        assert!(p.is_match("refs/heads/wip/a/b"));
        assert!(p.is_match("refs/tags/v1.2"));
        assert!(!p.is_match("refs/heads/main"));
        assert!(!p.is_match("refs/heads/WIP/a"));
        assert_eq!(p.matching("refs/tags/v1.0"), Some("refs/tags/v1.*"));
        assert_eq!(p.matching("refs/heads/main"), None);
    }

    #[test]
    fn actor_patterns_ignore_case_and_take_brackets_literally() {
        let p = Patterns::wildcards(&["*[bot]", "renovate*", "a{b}\\!"]).unwrap();
        assert!(p.is_match("dependabot[bot]"));
        assert!(p.is_match("Renovate Bot"));
        assert!(p.is_match("A{B}\\!"));
        // As a glob, `*[bot]` would match every name ending in b, o or t.
        assert!(!p.is_match("Elliot"));
        assert!(!p.is_match("Alice"));
        assert_eq!(p.matching("x[BOT]"), Some("*[bot]"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let err = Patterns::new(&["refs/heads/{a,b"]).unwrap_err();
        assert!(err.starts_with("bad pattern \"refs/heads/{a,b\""), "{err}");
        assert!(Patterns::new::<&str>(&[]).unwrap().is_empty());
    }
}
