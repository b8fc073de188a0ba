//! Paths as a user writes them: `~` expanded, `.` and `..` folded. Pure functions.

use std::path::{Path, PathBuf};

/// `~` and `~/...` as a shell would read them (with `home`, the `HOME` variable); anything
/// else unchanged.
pub fn expand_home(p: &str, home: Option<&str>) -> PathBuf {
    match (p.strip_prefix('~'), home) {
        (Some(""), Some(h)) => PathBuf::from(h),
        (Some(rest), Some(h)) if rest.starts_with('/') => Path::new(h).join(&rest[1..]),
        _ => PathBuf::from(p),
    }
}

/// `path` with `.` and `..` folded away (lexically: symlinks are left as they are).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
