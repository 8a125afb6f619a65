//! The guard's config file, `/etc/vitrine/guard.toml` by default.
//!
//! ```toml
//! # Folders whose filesystems are watched (`*` matches one path component).
//! watch = ["/home/*/Downloads", "/root/Downloads", "/tmp", "/media", "/run/media", "/mnt"]
//! # Executables (as /proc/PID/exe resolves them) that may not open a marked file.
//! interpreters = ["/usr/bin/sh", "/usr/bin/python3*"]
//! # Files untrusted by where they are, with or without a mark.
//! untrusted_paths = ["/home/*/Downloads/**"]
//! # Origins (`user.xdg.origin.url`) that do not make a file untrusted.
//! trusted_origins = ["https://intranet.example.com/*"]
//! socket = "/run/vitrine/guard.sock"
//! ```
//!
//! Every key is optional; a missing key takes the default above (the
//! default `untrusted_paths` and `trusted_origins` are empty). Every error
//! names the file, the line and what to write instead.

use std::ops::Range;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

pub use crate::toml_config::ConfigError;

use super::wire::DEFAULT_SOCKET;

/// Where the guard reads its config unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/vitrine/guard.toml";

/// The folders watched without a config file.
pub const DEFAULT_WATCH: &[&str] = &[
    "/home/*/Downloads",
    "/root/Downloads",
    "/tmp",
    "/media",
    "/run/media",
    "/mnt",
];

/// Interpreter names (at /usr/bin and /bin) without a config file.
pub const DEFAULT_INTERPRETERS: &[&str] =
    &["sh", "bash", "dash", "python3*", "perl", "ruby", "node"];

/// The guard's settings.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Folder patterns whose filesystems get a mark.
    pub watch: Vec<String>,
    /// Interpreter patterns, as written (empty: no open-permission mark).
    pub interpreters: Vec<String>,
    interpreter_set: GlobSet,
    untrusted_paths: GlobSet,
    trusted_origins: GlobSet,
    /// The subscriber socket.
    pub socket: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    watch: Option<Vec<Spanned<String>>>,
    interpreters: Option<Vec<Spanned<String>>>,
    untrusted_paths: Option<Vec<Spanned<String>>>,
    trusted_origins: Option<Vec<Spanned<String>>>,
    socket: Option<Spanned<String>>,
}

impl GuardConfig {
    /// The settings without a config file.
    pub fn defaults() -> GuardConfig {
        let interpreters = default_interpreters();
        GuardConfig {
            watch: DEFAULT_WATCH.iter().map(|s| s.to_string()).collect(),
            interpreter_set: glob_set(&interpreters).unwrap_or_else(|_| GlobSet::empty()),
            interpreters,
            untrusted_paths: GlobSet::empty(),
            trusted_origins: GlobSet::empty(),
            socket: PathBuf::from(DEFAULT_SOCKET),
        }
    }

    /// Reads `path`; when `path` is the default config and does not exist,
    /// the defaults.
    pub fn load(path: &Path) -> Result<GuardConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_toml(&text, path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG) =>
            {
                Ok(Self::defaults())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses config text read from `path` (named in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<GuardConfig, ConfigError> {
        let at = |span: Option<Range<usize>>, message: String| {
            ConfigError::at(text, path, span, message)
        };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            at(
                e.span(),
                format!(
                    "{}; the keys are watch, interpreters, untrusted_paths, trusted_origins, socket",
                    e.message()
                ),
            )
        })?;
        let mut config = Self::defaults();
        if let Some(watch) = file.watch {
            for w in &watch {
                if !w.get_ref().starts_with('/') {
                    return Err(at(
                        Some(w.span()),
                        format!("watch: {:?} is not absolute; write a folder like \"/home/*/Downloads\"", w.get_ref()),
                    ));
                }
            }
            config.watch = watch.into_iter().map(Spanned::into_inner).collect();
        }
        if let Some(list) = file.interpreters {
            config.interpreter_set =
                checked_set(&list, "interpreters", "\"/usr/bin/python3*\"", &at)?;
            config.interpreters = list.into_iter().map(Spanned::into_inner).collect();
        }
        if let Some(list) = file.untrusted_paths {
            config.untrusted_paths =
                checked_set(&list, "untrusted_paths", "\"/home/*/Downloads/**\"", &at)?;
        }
        if let Some(list) = file.trusted_origins {
            config.trusted_origins = checked_set(
                &list,
                "trusted_origins",
                "\"https://intranet.example.com/*\"",
                &at,
            )?;
        }
        if let Some(socket) = file.socket {
            if !socket.get_ref().starts_with('/') {
                return Err(at(
                    Some(socket.span()),
                    format!(
                        "socket: {:?} is not absolute; write a path like \"{DEFAULT_SOCKET}\"",
                        socket.get_ref()
                    ),
                ));
            }
            config.socket = PathBuf::from(socket.into_inner());
        }
        Ok(config)
    }

    /// True when `exe` (a resolved `/proc/PID/exe`) is a listed interpreter.
    pub fn is_interpreter(&self, exe: &str) -> bool {
        self.interpreter_set.is_match(exe)
    }

    /// True when there are path rules (so the event's path is needed).
    pub fn has_path_rules(&self) -> bool {
        !self.untrusted_paths.is_empty()
    }

    /// True when a path rule names `path`.
    pub fn path_rule(&self, path: &str) -> bool {
        self.untrusted_paths.is_match(path)
    }

    /// True when `origin` (a `user.xdg.origin.url`) is trusted.
    pub fn origin_is_trusted(&self, origin: &str) -> bool {
        self.trusted_origins.is_match(origin)
    }

    /// The existing folders that the `watch` patterns name, in order, each
    /// once. `*` matches one path component.
    pub fn watched_folders(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for pattern in &self.watch {
            for dir in expand(pattern) {
                if dir.is_dir() && !found.contains(&dir) {
                    found.push(dir);
                }
            }
        }
        found
    }
}

/// `sh`, `python3*`, ... at /usr/bin and /bin.
fn default_interpreters() -> Vec<String> {
    ["/usr/bin", "/bin"]
        .iter()
        .flat_map(|dir| {
            DEFAULT_INTERPRETERS
                .iter()
                .map(move |name| format!("{dir}/{name}"))
        })
        .collect()
}

/// `*` does not cross `/`: `/usr/bin/python3*` is not `/usr/bin/python3/x`.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        set.add(glob(p)?);
    }
    set.build()
}

fn checked_set(
    list: &[Spanned<String>],
    key: &str,
    example: &str,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for p in list {
        let g = glob(p.get_ref()).map_err(|e| {
            at(
                Some(p.span()),
                format!(
                    "{key}: {:?} is no glob ({}); write one like {example}",
                    p.get_ref(),
                    e.kind()
                ),
            )
        })?;
        set.add(g);
    }
    set.build()
        .map_err(|e| at(list.first().map(|p| p.span()), format!("{key}: {e}")))
}

/// The paths a watch pattern names now (a path without `*` names itself).
fn expand(pattern: &str) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/")];
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        if !part.contains(['*', '?', '[']) {
            paths.iter_mut().for_each(|p| p.push(part));
            continue;
        }
        let Ok(matcher) = glob(part).map(|g| g.compile_matcher()) else {
            return Vec::new();
        };
        let mut next = Vec::new();
        for dir in &paths {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<_> = entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| matcher.is_match(Path::new(n)))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        paths = next;
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_at(text: &str) -> (usize, String) {
        match GuardConfig::from_toml(text, Path::new("/etc/vitrine/guard.toml")) {
            Err(ConfigError::At {
                line,
                message,
                path,
                ..
            }) => {
                assert_eq!(path, Path::new("/etc/vitrine/guard.toml"));
                (line, message)
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let config = GuardConfig::from_toml("", Path::new("g.toml")).unwrap();

        assert_eq!(config.watch, DEFAULT_WATCH);
        assert!(config.is_interpreter("/usr/bin/python3.11"));
        assert!(config.is_interpreter("/usr/bin/dash"));
        assert!(!config.is_interpreter("/usr/bin/busybox"));
        assert!(!config.is_interpreter("/usr/bin/python3.11/x"));
        assert_eq!(config.socket, Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn a_missing_default_file_means_the_defaults_but_a_named_one_is_an_error() {
        let named = GuardConfig::load(Path::new("/nonexistent/guard.toml"));

        assert!(matches!(named, Err(ConfigError::Read { .. })));
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert_eq!(
                GuardConfig::load(Path::new(DEFAULT_CONFIG)).unwrap().watch,
                DEFAULT_WATCH
            );
        }
    }

    #[test]
    fn unknown_key_is_reported_on_its_line_with_the_known_keys() {
        let (line, message) = error_at("watch = [\"/tmp\"]\n\ninterpreter = []\n");

        assert_eq!(line, 3);
        assert!(message.contains("interpreters"), "{message}");
    }

    #[test]
    fn relative_watch_folder_is_refused_with_an_example() {
        let (line, message) =
            error_at("socket = \"/run/x.sock\"\nwatch = [\"/tmp\",\n \"Downloads\"]\n");

        assert_eq!(line, 3);
        assert!(
            message.contains("\"Downloads\" is not absolute"),
            "{message}"
        );
        assert!(message.contains("/home/*/Downloads"), "{message}");
    }

    #[test]
    fn bad_glob_names_its_key_and_line() {
        let (line, message) = error_at("\n\ninterpreters = [\"/usr/bin/[sh\"]\n");

        assert_eq!(line, 3);
        assert!(
            message.starts_with("interpreters: \"/usr/bin/[sh\" is no glob"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_and_relative_socket_are_refused() {
        assert_eq!(error_at("watch = \"/tmp\"\n").0, 1);
        let (line, message) = error_at("\nsocket = \"guard.sock\"\n");
        assert_eq!(line, 2);
        assert!(message.contains("not absolute"), "{message}");
    }

    #[test]
    fn empty_interpreter_list_matches_nothing() {
        let config = GuardConfig::from_toml("interpreters = []\n", Path::new("g.toml")).unwrap();

        assert!(config.interpreters.is_empty());
        assert!(!config.is_interpreter("/usr/bin/sh"));
    }

    #[test]
    fn path_rules_and_trusted_origins_match_as_written() {
        let text =
            "untrusted_paths = [\"/srv/in/**\"]\ntrusted_origins = [\"https://intra.example/*\"]\n";

        let config = GuardConfig::from_toml(text, Path::new("g.toml")).unwrap();

        assert!(config.path_rule("/srv/in/a/b.sh"));
        assert!(!config.path_rule("/srv/out/b.sh"));
        assert!(config.origin_is_trusted("https://intra.example/tool"));
        assert!(!config.origin_is_trusted("https://evil.example/tool"));
    }

    #[test]
    fn watch_star_names_each_existing_folder_once() {
        let root = tempfile::tempdir().unwrap();
        for user in ["ann", "bob"] {
            std::fs::create_dir_all(root.path().join(user).join("Downloads")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("cy")).unwrap();
        let base = root.path().display();
        let text = format!(
            "watch = [\"{base}/*/Downloads\", \"{base}/ann/Downloads\", \"{base}/none\"]\n"
        );

        let folders = GuardConfig::from_toml(&text, Path::new("g.toml"))
            .unwrap()
            .watched_folders();

        assert_eq!(
            folders,
            vec![
                root.path().join("ann/Downloads"),
                root.path().join("bob/Downloads")
            ]
        );
    }
}
