//! Apps and app sets: what a device runs.
//!
//! An [`AppSpec`] is the portable form (serde; what a release's target state can carry): the
//! app's name, its compose file text, and optionally per-service image references pinned by
//! digest that replace the compose file's `image`. An [`App`] is a spec parsed and validated,
//! with a revision that changes whenever anything the device runs changes.

use crate::compose::{self, ComposeFile};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where built-in apps live in the root image: `APPS_DIR/<name>/compose.yaml`, with the files
/// the compose file refers to (env files, bind-mounted config) beside it.
pub const BUILTIN_APPS_DIR: &str = "/usr/lib/otter/apps";
pub const COMPOSE_FILE: &str = "compose.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: String,
    /// The compose file, as text.
    pub compose: String,
    /// Service name → image reference, replacing that service's `image` (a server pins
    /// every image by digest: `registry/web@sha256:…`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
}

/// A set of apps, as a release or the server hands it to a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSet {
    pub apps: Vec<AppSpec>,
}

impl AppSet {
    /// Parse every app; names must be unique. `dir_of` gives the directory relative paths of
    /// an app resolve against.
    pub fn resolve(&self, dir_of: &dyn Fn(&str) -> PathBuf) -> Result<Vec<App>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for spec in &self.apps {
            if !seen.insert(spec.name.clone()) {
                return Err(Error::Other(format!(
                    "app `{}` is listed twice in the app set",
                    spec.name
                )));
            }
            out.push(App::from_spec(spec, &dir_of(&spec.name))?);
        }
        Ok(out)
    }

    /// Every image must be pinned by digest (a set from a server: the device must run exactly
    /// what was released, whatever a tag points at later).
    pub fn check_pinned(apps: &[App]) -> Result<()> {
        for a in apps {
            for (s, svc) in &a.compose.services {
                if !svc.image.contains("@sha256:") {
                    return Err(Error::Other(format!(
                        "app `{}` service `{s}`: image `{}` is not pinned by digest (use NAME@sha256:…)",
                        a.name, svc.image
                    )));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub name: String,
    /// Directory relative bind mounts and env files resolve against.
    pub dir: PathBuf,
    pub compose: ComposeFile,
    /// SHA-256 (hex, 16 chars) of what the device runs: changes iff a unit would change.
    pub revision: String,
    /// The spec it was made from (kept so the running set can be saved and restored).
    pub spec: AppSpec,
}

impl App {
    pub fn from_spec(spec: &AppSpec, dir: &Path) -> Result<App> {
        if !compose::is_valid_name(&spec.name) {
            return Err(Error::Other(format!(
                "app name `{}` must be 1-63 characters of a-z, 0-9, `-` and `_` (it names units and containers)",
                spec.name
            )));
        }
        let label = dir.join(COMPOSE_FILE).display().to_string();
        let mut compose = compose::parse(&label, &spec.compose)?;
        for (svc, image) in &spec.images {
            let Some(s) = compose.services.get_mut(svc) else {
                return Err(Error::Other(format!(
                    "app `{}`: `images.{svc}` names no service of its compose file",
                    spec.name
                )));
            };
            // Checked like the compose file's own `image`.
            let probe = format!("services:\n  x:\n    image: \"{image}\"\n");
            compose::parse(&format!("app {} images.{svc}", spec.name), &probe)?;
            s.image = image.clone();
        }
        let mut h = Sha256::new();
        h.update(spec.name.as_bytes());
        h.update([0]);
        h.update(dir.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(&compose).map_err(|e| Error::Other(e.to_string()))?);
        let revision = hex::encode(&h.finalize()[..8]);
        Ok(App {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            compose,
            revision,
            spec: spec.clone(),
        })
    }

    /// Load `dir/compose.yaml` as app `name`.
    pub fn load_dir(name: &str, dir: &Path) -> Result<App> {
        let path = dir.join(COMPOSE_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::Other(format!("cannot read {}: {e}", path.display())))?;
        App::from_spec(
            &AppSpec {
                name: name.to_string(),
                compose: text,
                images: BTreeMap::new(),
            },
            dir,
        )
    }

    /// Every image the app runs.
    pub fn images(&self) -> BTreeSet<String> {
        self.compose
            .services
            .values()
            .map(|s| s.image.clone())
            .collect()
    }

    /// Services in start order.
    pub fn start_order(&self) -> Vec<String> {
        // Validated at parse time, so an error cannot happen here; fall back to name order.
        crate::order::start_order(&self.compose)
            .unwrap_or_else(|_| self.compose.services.keys().cloned().collect())
    }
}

/// The built-in apps of a root image: every `<dir>/<name>/compose.yaml`, by name.
pub fn load_builtin(dir: &Path) -> Result<Vec<App>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Other(format!("cannot list {}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::Other(format!("cannot list {}: {e}", dir.display())))?;
        if e.path().join(COMPOSE_FILE).is_file() {
            names.push(e.file_name().to_string_lossy().to_string());
        }
    }
    names.sort();
    names
        .iter()
        .map(|n| App::load_dir(n, &dir.join(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "services:\n  web:\n    image: reg/web:1\n  db:\n    image: reg/db:1\n";

    fn spec(name: &str, compose: &str) -> AppSpec {
        AppSpec {
            name: name.into(),
            compose: compose.into(),
            images: BTreeMap::new(),
        }
    }

    #[test]
    fn revision_follows_content() {
        let a = App::from_spec(&spec("shop", WEB), Path::new("/a")).unwrap();
        let b = App::from_spec(&spec("shop", WEB), Path::new("/a")).unwrap();
        assert_eq!(a.revision, b.revision);
        let c = App::from_spec(
            &spec("shop", &WEB.replace("web:1", "web:2")),
            Path::new("/a"),
        )
        .unwrap();
        assert_ne!(a.revision, c.revision);
        // Comments and formatting do not change what runs.
        let d = App::from_spec(&spec("shop", &format!("# hi\n{WEB}")), Path::new("/a")).unwrap();
        assert_eq!(a.revision, d.revision);
    }

    #[test]
    fn pinned_images_override_and_are_checked() {
        let digest = format!("reg/web@sha256:{}", "b".repeat(64));
        let mut s = spec("shop", WEB);
        s.images.insert("web".into(), digest.clone());
        let a = App::from_spec(&s, Path::new("/a")).unwrap();
        assert_eq!(a.compose.services["web"].image, digest);
        let e = AppSet::check_pinned(std::slice::from_ref(&a))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("service `db`") && e.contains("not pinned"),
            "{e}"
        );
        s.images
            .insert("db".into(), format!("reg/db@sha256:{}", "c".repeat(64)));
        AppSet::check_pinned(&[App::from_spec(&s, Path::new("/a")).unwrap()]).unwrap();
        s.images.insert("ghost".into(), digest);
        let e = App::from_spec(&s, Path::new("/a")).unwrap_err().to_string();
        assert!(e.contains("images.ghost"), "{e}");
        let mut s = spec("shop", WEB);
        s.images.insert("web".into(), "not an image!".into());
        assert!(App::from_spec(&s, Path::new("/a")).is_err());
    }

    #[test]
    fn app_set_round_trip_and_duplicates() {
        let set = AppSet {
            apps: vec![spec("a", WEB), spec("b", WEB)],
        };
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(serde_json::from_str::<AppSet>(&json).unwrap(), set);
        assert_eq!(
            set.resolve(&|n| PathBuf::from(format!("/x/{n}")))
                .unwrap()
                .len(),
            2
        );
        let dup = AppSet {
            apps: vec![spec("a", WEB), spec("a", WEB)],
        };
        let e = dup
            .resolve(&|_| PathBuf::from("/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = App::from_spec(&spec("Bad Name", WEB), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("app name"), "{e}");
    }

    #[test]
    fn the_example_app_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/qemu-x86_64-apps/apps/hello");
        let a = App::load_dir("hello", &dir).unwrap();
        assert_eq!(
            a.images().into_iter().collect::<Vec<_>>(),
            ["localhost/hello:1"]
        );
    }

    #[test]
    fn builtin_dir() {
        let d = tempfile::tempdir().unwrap();
        assert!(load_builtin(&d.path().join("none")).unwrap().is_empty());
        for n in ["zeta", "alpha"] {
            std::fs::create_dir_all(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join(COMPOSE_FILE), WEB).unwrap();
        }
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        let apps = load_builtin(d.path()).unwrap();
        assert_eq!(
            apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["alpha", "zeta"]
        );
        assert_eq!(apps[0].start_order(), ["db", "web"]);
        std::fs::write(
            d.path().join("alpha").join(COMPOSE_FILE),
            "services: {web: {image: x, build: .}}",
        )
        .unwrap();
        let e = load_builtin(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("alpha/compose.yaml") && e.contains("services.web.build"),
            "{e}"
        );
    }
}
