//! Checked tree paths.
//!
//! A node's path comes from the system that was backed up, so it is input
//! from the lower-trust zone: a compromised agent may put anything there.
//! [`TreePath::parse`] is the one place that decides whether a path may
//! name something inside a restore root. A path is accepted only when it
//! is absolute (`/` alone is the root), every component is non-empty and
//! neither `.` nor `..`, no `/` is repeated or trailing, it holds no NUL,
//! no component is longer than [`MAX_COMPONENT`] bytes and the whole is
//! at most [`MAX_PATH`] bytes. Whatever passes can be joined beneath a
//! root component by component without ever leaving it (symbolic links
//! aside: the restore resolves each component without following them).

use std::fmt;

/// Longest component, bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// Longest path, bytes. Longer than Linux's `PATH_MAX` (4096) on purpose:
/// the agent reads deep trees relative to open folders, so a backed-up
/// path may exceed what one system call takes.
pub const MAX_PATH: usize = 64 * 1024;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path is not absolute")]
    NotAbsolute,
    /// Two `/` in a row, or a `/` at the end.
    #[error("the path has an empty component (a repeated or trailing /)")]
    EmptyComponent,
    /// A `.` component.
    #[error("the path has a . component")]
    Dot,
    /// A `..` component.
    #[error("the path has a .. component")]
    DotDot,
    /// A NUL byte.
    #[error("the path holds a NUL byte")]
    Nul,
    /// A component longer than [`MAX_COMPONENT`].
    #[error("a component of the path is longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong,
    /// A path longer than [`MAX_PATH`].
    #[error("the path is longer than {MAX_PATH} bytes")]
    TooLong,
}

/// A node's path that [`TreePath::parse`] accepted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TreePath<'a>(&'a [u8]);

impl<'a> TreePath<'a> {
    /// Checks `path` (see the module's documentation).
    pub fn parse(path: &'a [u8]) -> Result<TreePath<'a>, PathError> {
        if path.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        let Some(rest) = path.strip_prefix(b"/") else {
            return Err(PathError::NotAbsolute);
        };
        if path.contains(&0) {
            return Err(PathError::Nul);
        }
        if rest.is_empty() {
            return Ok(TreePath(path));
        }
        for c in rest.split(|b| *b == b'/') {
            match c {
                b"" => return Err(PathError::EmptyComponent),
                b"." => return Err(PathError::Dot),
                b".." => return Err(PathError::DotDot),
                c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong),
                _ => {}
            }
        }
        Ok(TreePath(path))
    }

    /// The path's bytes, as recorded.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.0.len() == 1
    }

    /// The components, outermost first; none for the root. Each is a
    /// single non-empty file name, never `.` or `..`.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        let rest = &self.0[1..];
        rest.split(|b| *b == b'/').filter(|c| !c.is_empty())
    }

    /// The folder holding it and its last name; `None` for the root.
    pub fn split_last(&self) -> Option<(TreePath<'a>, &'a [u8])> {
        if self.is_root() {
            return None;
        }
        let at = self.0.iter().rposition(|b| *b == b'/').expect("absolute");
        let parent = if at == 0 { &self.0[..1] } else { &self.0[..at] };
        Some((TreePath(parent), &self.0[at + 1..]))
    }
}

impl fmt::Debug for TreePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TreePath({:?})", String::from_utf8_lossy(self.0))
    }
}

impl fmt::Display for TreePath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::escape_bytes(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_are_accepted_and_split() {
        let p = TreePath::parse(b"/").unwrap();
        assert!(p.is_root());
        assert_eq!(p.components().count(), 0);
        assert!(p.split_last().is_none());
        let p = TreePath::parse(b"/etc/cron.d/x").unwrap();
        assert_eq!(
            p.components().collect::<Vec<_>>(),
            vec![&b"etc"[..], b"cron.d", b"x"]
        );
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.as_bytes(), b"/etc/cron.d");
        assert_eq!(name, b"x");
        let (parent, name) = TreePath::parse(b"/a").unwrap().split_last().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, b"a");
        // Names that merely look odd are names.
        for ok in [
            &b"/..."[..],
            b"/.a",
            b"/a..",
            b"/a\\..",
            b"/\xff\xfe",
            b"/a b/c",
        ] {
            TreePath::parse(ok).unwrap();
        }
    }

    #[test]
    fn traversal_and_malformed_paths_are_refused() {
        let cases: &[(&[u8], PathError)] = &[
            (b"", PathError::NotAbsolute),
            (b"etc/x", PathError::NotAbsolute),
            (b"//etc/x", PathError::EmptyComponent),
            (b"/etc//x", PathError::EmptyComponent),
            (b"/etc/", PathError::EmptyComponent),
            (b"/..", PathError::DotDot),
            (b"/a/../../x", PathError::DotDot),
            (b"/a/..", PathError::DotDot),
            (b"/./a", PathError::Dot),
            (b"/a/.", PathError::Dot),
            (b"/a\0b", PathError::Nul),
        ];
        for (path, want) in cases {
            assert_eq!(
                TreePath::parse(path).unwrap_err(),
                *want,
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        let long = [b'a'; MAX_COMPONENT + 1];
        let mut p = b"/".to_vec();
        p.extend_from_slice(&long);
        assert_eq!(
            TreePath::parse(&p).unwrap_err(),
            PathError::ComponentTooLong
        );
        let huge = b"/a".repeat(MAX_PATH / 2 + 1);
        assert_eq!(TreePath::parse(&huge).unwrap_err(), PathError::TooLong);
    }

    proptest::proptest! {
        /// Any bytes: no panic; what is accepted splits into components
        /// that are single, non-empty names other than `.` and `..`, and
        /// joins back to the same path.
        #[test]
        fn what_is_accepted_stays_beneath_the_root(
            path in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'/'),
                    proptest::strategy::Just(b'.'),
                    proptest::strategy::Just(0u8),
                    proptest::num::u8::ANY,
                ],
                0..40,
            )
        ) {
            if let Ok(p) = TreePath::parse(&path) {
                let parts: Vec<&[u8]> = p.components().collect();
                for c in &parts {
                    proptest::prop_assert!(!c.is_empty());
                    proptest::prop_assert!(*c != b"." && *c != b"..");
                    proptest::prop_assert!(!c.contains(&b'/') && !c.contains(&0));
                }
                let mut joined = b"/".to_vec();
                joined.extend_from_slice(&parts.join(&b'/'));
                proptest::prop_assert_eq!(joined, path);
            }
        }
    }
}
