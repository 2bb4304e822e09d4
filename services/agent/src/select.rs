//! Choosing paths by glob patterns, for a backup's selection and a
//! restore's `--include`/`--exclude` (syntax in [`arca_schemas::PathFilter`]).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use arca_schemas::PathFilter;

/// A pattern that does not compile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern named is not a glob.
    #[error("pattern {pattern:?}: {source}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// Why it does not compile.
        source: globset::Error,
    },
    /// The patterns together do not compile.
    #[error(transparent)]
    Set(globset::Error),
}

/// A compiled set of patterns.
#[derive(Debug, Default)]
struct Patterns {
    /// Patterns with a `/`, matched against the whole path.
    whole: Option<GlobSet>,
    /// Patterns without one, matched against each name.
    name: Option<GlobSet>,
}

impl Patterns {
    fn new(patterns: &[String]) -> Result<Patterns, PatternError> {
        if patterns.is_empty() {
            return Ok(Patterns::default());
        }
        let (mut whole, mut name) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        let (mut any_whole, mut any_name) = (false, false);
        for p in patterns {
            let glob = |text: &str| -> Result<Glob, PatternError> {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|source| PatternError::Pattern {
                        pattern: p.clone(),
                        source,
                    })
            };
            if p.contains('/') {
                // A pattern names an absolute path; a trailing slash means
                // the same folder.
                let t = p.trim_end_matches('/');
                let t = if t.starts_with('/') || t.starts_with("**") {
                    t.to_owned()
                } else {
                    format!("/{t}")
                };
                whole.add(glob(&t)?);
                any_whole = true;
            } else {
                name.add(glob(p)?);
                any_name = true;
            }
        }
        let build = |b: GlobSetBuilder| b.build().map_err(PatternError::Set);
        Ok(Patterns {
            whole: if any_whole { Some(build(whole)?) } else { None },
            name: if any_name { Some(build(name)?) } else { None },
        })
    }

    fn is_empty(&self) -> bool {
        self.whole.is_none() && self.name.is_none()
    }

    /// True when `path` itself matches (not its folders).
    fn matches_exactly(&self, path: &[u8]) -> bool {
        let text = String::from_utf8_lossy(path);
        if let Some(w) = &self.whole
            && w.is_match(text.as_ref())
        {
            return true;
        }
        if let Some(n) = &self.name {
            let base = text.rsplit('/').next().unwrap_or("");
            return !base.is_empty() && n.is_match(base);
        }
        false
    }

    /// True when `path` or one of the folders above it matches.
    fn matches_within(&self, path: &[u8]) -> bool {
        !self.is_empty() && ancestors(path).any(|p| self.matches_exactly(p))
    }
}

/// `path` and every folder above it, longest first (the root `/` is left out).
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let cur = next?;
        next = cur
            .iter()
            .rposition(|b| *b == b'/')
            .filter(|i| *i > 0)
            .map(|i| &cur[..i]);
        (!cur.is_empty() && cur != b"/").then_some(cur)
    })
}

/// Include and exclude patterns, compiled.
#[derive(Debug, Default)]
pub struct Filter {
    include: Patterns,
    exclude: Patterns,
}

impl Filter {
    /// Compiles `filter`; an unreadable pattern is named in the error.
    pub fn new(filter: &PathFilter) -> Result<Filter, PatternError> {
        Ok(Filter {
            include: Patterns::new(&filter.include)?,
            exclude: Patterns::new(&filter.exclude)?,
        })
    }

    /// True when `path` is excluded (it or a folder above it matches an
    /// exclude pattern).
    pub fn excluded(&self, path: &[u8]) -> bool {
        self.exclude.matches_within(path)
    }

    /// True when `path` itself matches an exclude pattern: enough for an
    /// entry of a folder that was not excluded.
    pub fn excluded_here(&self, path: &[u8]) -> bool {
        !self.exclude.is_empty() && self.exclude.matches_exactly(path)
    }

    /// True when `path` is taken: not excluded, and included when include
    /// patterns are set. Folders only on the way to included paths are
    /// not taken by this test; see [`Filter::has_includes`].
    pub fn takes(&self, path: &[u8]) -> bool {
        !self.excluded(path) && (self.include.is_empty() || self.include.matches_within(path))
    }

    /// True when there are exclude patterns.
    pub fn excludes_anything(&self) -> bool {
        !self.exclude.is_empty()
    }

    /// True when there are include patterns.
    pub fn has_includes(&self) -> bool {
        !self.include.is_empty()
    }
}

/// True when `path` is strictly inside folder `dir`.
pub fn is_inside(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len()
        && path.starts_with(dir)
        && (dir.ends_with(b"/") || path[dir.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        Filter::new(&PathFilter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn names_match_anywhere_and_paths_match_whole() {
        let f = filter(&[], &["*.log", "/srv/tmp", "cache/"]);
        assert!(f.excluded(b"/srv/app/x.log"));
        assert!(f.excluded(b"/srv/tmp"));
        assert!(f.excluded(b"/srv/tmp/a/b"));
        assert!(!f.excluded(b"/srv/tmpx"));
        assert!(!f.excluded(b"/srv/app/x.logs"));
        assert!(f.excluded(b"/cache/y"), "a trailing slash is a whole path");
        assert!(!f.excluded(b"/srv/cache/y"));
    }

    #[test]
    fn star_stays_within_a_name_and_double_star_crosses() {
        let f = filter(&["/srv/*/conf"], &[]);
        assert!(f.takes(b"/srv/a/conf"));
        assert!(f.takes(b"/srv/a/conf/x"));
        assert!(!f.takes(b"/srv/a/b/conf"));
        let f = filter(&["/srv/**/conf"], &[]);
        assert!(f.takes(b"/srv/a/b/conf/x"));
        assert!(!f.takes(b"/srv/a/b"));
    }

    #[test]
    fn exclude_wins_over_include() {
        let f = filter(&["/srv/**"], &["*.tmp"]);
        assert!(f.takes(b"/srv/a"));
        assert!(!f.takes(b"/srv/a.tmp"));
        assert!(!f.takes(b"/etc/a"));
    }

    #[test]
    fn inside_respects_name_boundaries() {
        assert!(is_inside(b"/a/b/c", b"/a/b"));
        assert!(is_inside(b"/a", b"/"));
        assert!(!is_inside(b"/a/bc", b"/a/b"));
        assert!(!is_inside(b"/a/b", b"/a/b"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let e = Filter::new(&PathFilter {
            include: vec!["/a/[".into()],
            exclude: vec![],
        })
        .unwrap_err();
        assert!(e.to_string().contains("/a/["), "{e}");
    }
}
