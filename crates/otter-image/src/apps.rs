//! Built-in apps (`[[apps]]` in `otter.toml`): podman in the root, configured for a
//! read-only root, the apps' compose files under `/usr/lib/otter/apps/<name>/`, and their
//! images in a read-only image store in the root, so a device runs them on first boot
//! without a network.
//!
//! Podman cannot run containers on a build host, but it can load and pull images into a
//! store given with `--root`; that store is then copied into the root image as is.

use crate::{ImageError, IoContext, Result, run};
use otter_apps::unit::{GRAPHROOT, IMAGE_STORE};
use otter_config::Project;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages an image with apps gets: podman and its OCI runtime, CNI plugins (podman 4.3 in
/// bookworm uses CNI), DNS between an app's services, iptables for published ports, skopeo.
pub const APP_PACKAGES: &[&str] = &[
    "podman",
    "crun",
    "containernetworking-plugins",
    "golang-github-containernetworking-plugin-dnsname",
    "iptables",
    // Reads image manifests from registries (sizes for the free-space check).
    "skopeo",
];

/// An `[[apps]]` entry checked and resolved.
#[derive(Debug, Clone)]
pub struct BuiltinApp {
    pub name: String,
    pub compose: PathBuf,
    pub archives: Vec<PathBuf>,
    /// Every image its services run.
    pub images: BTreeSet<String>,
}

/// Check every app before the slow steps: the compose file parses (as it will on the device),
/// the archives exist.
pub fn check(p: &Project) -> Result<Vec<BuiltinApp>> {
    let mut out = Vec::new();
    for (i, a) in p.file.apps.iter().enumerate() {
        let compose = p.resolve(&a.compose);
        let text = std::fs::read_to_string(&compose).map_err(|e| {
            ImageError::Other(format!(
                "{}: apps[{i}].compose: cannot read {}: {e}",
                p.path.display(),
                compose.display()
            ))
        })?;
        let device_dir = Path::new(otter_apps::app::BUILTIN_APPS_DIR).join(&a.name);
        let app = otter_apps::App::from_spec(
            &otter_apps::AppSpec {
                name: a.name.clone(),
                compose: text,
                images: Default::default(),
            },
            &device_dir,
        )
        .map_err(|e| {
            ImageError::Other(format!(
                "{}: app `{}` ({}): {e}",
                p.path.display(),
                a.name,
                compose.display()
            ))
        })?;
        let mut archives = Vec::new();
        for (j, img) in a.images.iter().enumerate() {
            let path = p.resolve(img);
            if !path.is_file() {
                return Err(ImageError::Other(format!(
                    "{}: apps[{i}].images[{j}]: {} is not a file (an OCI archive: podman save --format oci-archive, or skopeo copy … oci-archive:FILE:NAME)",
                    p.path.display(),
                    path.display()
                )));
            }
            archives.push(path);
        }
        out.push(BuiltinApp {
            name: a.name.clone(),
            compose,
            archives,
            images: app.images(),
        });
    }
    Ok(out)
}

const STORAGE_CONF: &str = "\
# Written by otter build: podman on a read-only root.
[storage]
driver = \"overlay\"
# Writable storage directly on the data partition: /var is an overlayfs, which cannot hold
# the upper layers of podman's overlay driver.
graphroot = \"@GRAPHROOT@\"
runroot = \"/run/containers/storage\"

[storage.options]
# The built-in apps' images, in the root: apps run on first boot without a network.
additionalimagestores = [\"@IMAGE_STORE@\"]
";

const CONTAINERS_CONF: &str = "\
# Written by otter build.
[containers]
log_driver = \"journald\"

[network]
network_backend = \"cni\"

[engine]
# Containers run under units otterd writes; podman manages their cgroups itself.
cgroup_manager = \"cgroupfs\"
# No journald D-Bus dependency for podman's own events.
events_logger = \"file\"
";

/// CNI keeps IP allocations in /var/lib/cni; after a power cut stale ones would stay on the
/// data partition and exhaust the range, so they live in RAM and start empty at every boot.
const FSTAB_CNI: &str = "tmpfs                 /var/lib/cni  tmpfs  mode=0755,x-systemd.requires-mounts-for=/var  0 0\n";

fn write(path: &Path, content: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).ctx(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, content).ctx(|| format!("writing {}", path.display()))
}

/// Copy the compose file's directory (env files, config to bind-mount) into the root as
/// `/usr/lib/otter/apps/<name>/`, the compose file as `compose.yaml`, archives left out.
fn copy_app_dir(a: &BuiltinApp, dest: &Path) -> Result<()> {
    let src = a.compose.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dest).ctx(|| format!("creating {}", dest.display()))?;
    let skip: BTreeSet<PathBuf> = a
        .archives
        .iter()
        .chain(std::iter::once(&a.compose))
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    for e in std::fs::read_dir(src).ctx(|| format!("listing {}", src.display()))? {
        let e = e.ctx(|| format!("listing {}", src.display()))?;
        let path = e.path();
        if path.canonicalize().is_ok_and(|c| skip.contains(&c)) {
            continue;
        }
        let mut cmd = Command::new("cp");
        cmd.arg("-a").arg(&path).arg(dest);
        run(
            &mut cmd,
            &format!("copying app `{}` files", a.name),
            "coreutils",
        )?;
    }
    std::fs::copy(&a.compose, dest.join(otter_apps::app::COMPOSE_FILE))
        .ctx(|| format!("copying {}", a.compose.display()))?;
    Ok(())
}

/// Podman on the build host, working on the store that goes into the root.
struct StorePodman {
    store: PathBuf,
    runroot: tempfile::TempDir,
    conf: tempfile::NamedTempFile,
}

impl StorePodman {
    fn new(store: &Path) -> Result<StorePodman> {
        std::fs::create_dir_all(store).ctx(|| format!("creating {}", store.display()))?;
        let runroot = tempfile::tempdir().ctx(|| "making a podman runroot".to_string())?;
        // The host's own storage.conf (mount options, other stores) must not leak in.
        let conf = tempfile::NamedTempFile::new().ctx(|| "making a storage.conf".to_string())?;
        std::fs::write(
            conf.path(),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                store.display(),
                runroot.path().display()
            ),
        )
        .ctx(|| "writing a storage.conf".to_string())?;
        Ok(StorePodman {
            store: store.to_path_buf(),
            runroot,
            conf,
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_STORAGE_CONF", self.conf.path())
            .arg("--root")
            .arg(&self.store)
            .arg("--runroot")
            .arg(self.runroot.path())
            .arg("--storage-driver=overlay")
            .arg("--events-backend=file")
            .arg("--cgroup-manager=cgroupfs");
        c
    }

    fn exists(&self, image: &str) -> Result<bool> {
        let st = self
            .cmd()
            .args(["image", "exists", image])
            .status()
            .ctx(|| "running podman (apt-get install podman)".to_string())?;
        Ok(st.success())
    }
}

/// Put podman, its configuration, the apps and their images into `tree`.
pub fn install(tree: &Path, apps: &[BuiltinApp], log: &mut dyn FnMut(&str)) -> Result<()> {
    if apps.is_empty() {
        return Ok(());
    }
    let rel = |p: &str| tree.join(p.trim_start_matches('/'));
    write(
        &rel("etc/containers/storage.conf"),
        &STORAGE_CONF
            .replace("@GRAPHROOT@", GRAPHROOT)
            .replace("@IMAGE_STORE@", IMAGE_STORE),
    )?;
    write(&rel("etc/containers/containers.conf"), CONTAINERS_CONF)?;
    let fstab = rel("etc/fstab");
    let mut tab = std::fs::read_to_string(&fstab).ctx(|| format!("reading {}", fstab.display()))?;
    if !tab.contains("/var/lib/cni") {
        tab.push_str(FSTAB_CNI);
        std::fs::write(&fstab, tab).ctx(|| format!("writing {}", fstab.display()))?;
    }
    std::fs::create_dir_all(rel("var/lib/cni")).ctx(|| "creating var/lib/cni".to_string())?;

    for a in apps {
        copy_app_dir(a, &rel(otter_apps::app::BUILTIN_APPS_DIR).join(&a.name))?;
    }

    let store = rel(IMAGE_STORE);
    let pm = StorePodman::new(&store)?;
    for a in apps {
        for archive in &a.archives {
            log(&format!("apps: {}: loading {}", a.name, archive.display()));
            let mut c = pm.cmd();
            c.arg("load").arg("--quiet").arg("--input").arg(archive);
            run(
                &mut c,
                &format!("loading {} into the image store", archive.display()),
                "podman",
            )?;
        }
    }
    for a in apps {
        for image in &a.images {
            if pm.exists(image)? {
                continue;
            }
            log(&format!("apps: {}: pulling {image}", a.name));
            let mut c = pm.cmd();
            c.arg("pull").arg("--quiet").arg(image);
            run(&mut c, &format!("pulling {image} for app `{}` (or list an OCI archive of it in apps.images)", a.name), "podman")
                .map_err(|e| ImageError::Other(format!("app `{}`: image {image} is in none of its archives and could not be pulled: {e}", a.name)))?;
        }
    }
    // Only the image store proper goes into the root: podman's database and scratch
    // directories of this build host do not.
    for d in [
        "libpod",
        "tmp",
        "volumes",
        "mounts",
        "defaultNetworkBackend",
        "userns.lock",
    ] {
        let p = store.join(d);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).ctx(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path, apps: &str) -> Project {
        std::fs::create_dir_all(dir.join("boards")).unwrap();
        std::fs::write(
            dir.join("boards/b.toml"),
            "name = \"b\"\narch = \"amd64\"\nkernel_package = \"linux-image-amd64\"\nbootloader = \"grub-efi\"\n[partitions]\nboot = \"64M\"\nslot = \"1G\"\ndata = \"256M\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("otter.toml"),
            format!("[image]\nname = \"t\"\nversion = \"1.0.0\"\nboard = \"b\"\n[signing]\nkey = \"k\"\n{apps}"),
        )
        .unwrap();
        Project::load(&dir.join("otter.toml")).unwrap()
    }

    #[test]
    fn check_parses_compose_and_archives() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("apps/hello")).unwrap();
        std::fs::write(
            d.path().join("apps/hello/compose.yaml"),
            "services:\n  web:\n    image: localhost/hello:1\n",
        )
        .unwrap();
        std::fs::write(d.path().join("apps/hello/hello.tar"), "x").unwrap();
        let entry = "[[apps]]\nname = \"hello\"\ncompose = \"apps/hello/compose.yaml\"\nimages = [\"apps/hello/hello.tar\"]\n";
        let apps = check(&project(d.path(), entry)).unwrap();
        assert_eq!(
            apps[0].images.iter().collect::<Vec<_>>(),
            ["localhost/hello:1"]
        );

        let e = check(&project(d.path(), &entry.replace("hello.tar", "nope.tar")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("apps[0].images[0]") && e.contains("nope.tar"),
            "{e}"
        );
        std::fs::write(
            d.path().join("apps/hello/compose.yaml"),
            "services:\n  web:\n    image: x\n    build: .\n",
        )
        .unwrap();
        let e = check(&project(d.path(), entry)).unwrap_err().to_string();
        assert!(
            e.contains("app `hello`") && e.contains("services.web.build"),
            "{e}"
        );
        let e = check(&project(d.path(), &entry.replace("compose.yaml", "c.yaml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apps[0].compose"), "{e}");
    }

    #[test]
    fn app_dir_is_copied_without_archives() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("conf")).unwrap();
        std::fs::write(src.join("app.yml"), "services: {}").unwrap();
        std::fs::write(src.join("web.env"), "A=1").unwrap();
        std::fs::write(src.join("conf/x.conf"), "x").unwrap();
        std::fs::write(src.join("img.tar"), "big").unwrap();
        let a = BuiltinApp {
            name: "a".into(),
            compose: src.join("app.yml"),
            archives: vec![src.join("img.tar")],
            images: BTreeSet::new(),
        };
        let dest = d.path().join("dest");
        copy_app_dir(&a, &dest).unwrap();
        assert!(dest.join("compose.yaml").is_file());
        assert!(dest.join("web.env").is_file() && dest.join("conf/x.conf").is_file());
        assert!(!dest.join("img.tar").exists() && !dest.join("app.yml").exists());
    }

    /// The whole install into a tree, with a real image loaded into the store (needs root,
    /// podman, umoci, skopeo, busybox-static).
    #[test]
    fn install_loads_images_into_the_store() {
        // SAFETY: getuid has no preconditions.
        let root = unsafe { libc::getuid() } == 0;
        let tools = ["podman", "umoci", "skopeo"].iter().all(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !root || !tools || !Path::new("/bin/busybox").exists() {
            eprintln!("skipped: needs root, podman, umoci, skopeo, busybox-static");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("hello");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("compose.yaml"),
            "services:\n  web:\n    image: localhost/otter-build-test:1\n",
        )
        .unwrap();
        let archive = src.join("hello.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-app-image");
        assert!(
            Command::new(script)
                .arg(&archive)
                .arg("localhost/otter-build-test:1")
                .status()
                .unwrap()
                .success()
        );
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/fstab"), "# base\n").unwrap();
        let mut apps = vec![BuiltinApp {
            name: "hello".into(),
            compose: src.join("compose.yaml"),
            archives: vec![archive],
            images: ["localhost/otter-build-test:1".to_string()].into(),
        }];
        let mut logs = Vec::new();
        install(&tree, &apps, &mut |l| logs.push(l.to_string())).unwrap();
        let store = tree.join(IMAGE_STORE.trim_start_matches('/'));
        assert!(store.join("overlay-images/images.json").is_file());
        assert!(!store.join("libpod").exists());
        let conf = std::fs::read_to_string(tree.join("etc/containers/storage.conf")).unwrap();
        assert!(conf.contains("additionalimagestores = [\"/usr/lib/containers/storage\"]"));
        assert!(conf.contains("graphroot = \"/data/containers/storage\""));
        let fstab = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
        assert!(fstab.contains("/var/lib/cni  tmpfs"));
        assert!(tree.join("usr/lib/otter/apps/hello/compose.yaml").is_file());
        assert!(!tree.join("usr/lib/otter/apps/hello/hello.tar").exists());
        // The store is a valid podman store holding the image.
        let pm = StorePodman::new(&store).unwrap();
        assert!(pm.exists("localhost/otter-build-test:1").unwrap());
        // An image in no archive and no registry: the error names the app and the image.
        apps[0].archives.clear();
        apps[0].images.insert("127.0.0.1:9/none:1".into());
        let e = install(&tree, &apps, &mut |_| {}).unwrap_err().to_string();
        assert!(
            e.contains("app `hello`") && e.contains("127.0.0.1:9/none:1"),
            "{e}"
        );
    }
}
