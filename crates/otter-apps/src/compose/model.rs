//! The model of an accepted compose file: what the walk produces and the units are made from.

use super::*;

/// A parsed, cross-checked compose file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComposeFile {
    /// Top-level `name` (informational; the app's name comes from `otter.toml` or the app set).
    pub name: Option<String>,
    pub services: BTreeMap<String, Service>,
    /// Top-level `volumes`: the named volumes services may use.
    pub volumes: BTreeMap<String, VolumeDecl>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeDecl {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub env_file: Vec<EnvFile>,
    pub ports: Vec<Port>,
    pub volumes: Vec<Mount>,
    pub restart: Restart,
    pub depends_on: BTreeMap<String, Condition>,
    pub healthcheck: Option<Healthcheck>,
    pub privileged: bool,
    pub devices: Vec<Device>,
    pub cap_add: Vec<String>,
    pub network_mode: NetworkMode,
    pub labels: BTreeMap<String, String>,
    /// Bytes.
    pub mem_limit: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvFile {
    pub path: String,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    No,
    Always,
    /// `on-failure[:N]`: at most N restarts.
    OnFailure(Option<u32>),
    UnlessStopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: Option<String>,
    /// `None`: podman picks a free host port.
    pub published: Option<PortRange>,
    pub target: PortRange,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Mount {
    /// A named volume (`source` declared under top-level `volumes`), or an anonymous one
    /// (`source: None`). Lives in podman's storage on the data partition.
    Volume {
        source: Option<String>,
        target: String,
        read_only: bool,
    },
    /// A host path; relative paths are relative to the compose file's directory.
    Bind {
        source: String,
        target: String,
        read_only: bool,
        create_host_path: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HealthTest {
    /// `["NONE"]` or `disable: true`: no health check, not even the image's.
    Disabled,
    /// `["CMD", prog, args…]`: run without a shell.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "…"]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `None`: keep the image's own test, with these timings.
    pub test: Option<HealthTest>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

impl Healthcheck {
    pub fn is_disabled(&self) -> bool {
        matches!(self.test, Some(HealthTest::Disabled))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub host: String,
    pub container: String,
    /// Some of `rwm`.
    pub permissions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Not set: the app's own network, where services find each other by name.
    App,
    Host,
    None,
    /// Podman's default bridge network.
    Bridge,
    /// `service:NAME`: share that service's network namespace.
    Service(String),
}
