//! Configuration: our native TOML file, or the original's `conf.yaml` list.
//!
//! `--config` takes either. A file whose name ends in `.yaml`/`.yml`, or whose
//! first meaningful line starts with `-`, is read as the original list of
//! `{devicematch, nummaxdevices}`; anything else is TOML ([`Config`]). Both
//! become the same [`Config`], and both are validated by compiling every rule
//! ([`crate::rules::compile`]), so a bad regex, an unknown field, zero users or
//! a pooled name over 63 characters is reported by `--check-config` with the
//! file, field and value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smarter_common::config::{ConfigError, Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/device-manager.toml";
/// Where the kubelet looks for device plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Device root scanned for nodes.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// Sysfs root (udev properties, Jetson GPUs).
pub const DEFAULT_SYS_ROOT: &str = "/sys";
/// The udev database (`E:KEY=value` lines per device).
pub const DEFAULT_UDEV_DATA_DIR: &str = "/run/udev/data";
/// Seconds between periodic health checks.
pub const DEFAULT_HEALTH_INTERVAL_SECS: u64 = 10;

/// Top-level configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding `kubelet.sock` and our plugin sockets.
    pub plugin_dir: PathBuf,
    /// Root of the device tree (`/dev`).
    pub dev_root: PathBuf,
    /// Root of sysfs (`/sys`).
    pub sys_root: PathBuf,
    /// The udev database directory; properties found there refine the ones
    /// read from sysfs. Missing is fine (no udev daemon).
    pub udev_data_dir: PathBuf,
    /// Seconds between full rescans that confirm each node still exists with
    /// the same major:minor. 0 disables them (inotify still works).
    pub health_interval_secs: u64,
    /// Optional `host:port` for `/metrics` and `/healthz` (plain HTTP/1).
    /// Keep it on a local address; empty disables it.
    pub metrics_address: String,
    /// Reload when the config file changes (an edit or a ConfigMap update),
    /// as on SIGHUP.
    pub watch_config: bool,
    /// Where to write CDI spec files for rules with `cdi_kind` (e.g.
    /// `/var/run/cdi`); empty writes none (the names are still returned).
    pub cdi_spec_dir: String,
    /// Hotplug source: `auto` (the udev monitor when a udev daemon listens
    /// on `control` next to `udev_data_dir`, else inotify), `udev` or
    /// `inotify`. See the README's hotplug section.
    pub hotplug: Hotplug,
    /// A file with the rules in the original `conf.yaml` list format, read
    /// when this config loads; empty = none. Lets a DaemonSet keep its rules
    /// in the original format and still set the keys above. Not together
    /// with `[[rules]]`.
    pub rules_file: String,
    /// The rules. Absent means the original's default rules.
    pub rules: Option<Vec<RuleConfig>>,
}

/// Where hotplug events come from (`hotplug = "auto" | "udev" | "inotify"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hotplug {
    /// The udev monitor when a udev daemon runs, else inotify.
    #[default]
    Auto,
    /// The udev monitor (inotify when this build has no udev feature or the
    /// monitor socket cannot be opened).
    Udev,
    /// inotify on the device root and the udev database only.
    Inotify,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            dev_root: PathBuf::from(DEFAULT_DEV_ROOT),
            sys_root: PathBuf::from(DEFAULT_SYS_ROOT),
            udev_data_dir: PathBuf::from(DEFAULT_UDEV_DATA_DIR),
            health_interval_secs: DEFAULT_HEALTH_INTERVAL_SECS,
            metrics_address: String::new(),
            watch_config: true,
            cdi_spec_dir: String::new(),
            hotplug: Hotplug::Auto,
            rules_file: String::new(),
            rules: None,
        }
    }
}

/// Where a rule finds its devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Nodes, directories and links under the device root.
    #[default]
    Dev,
    /// Jetson GPUs: `gpu.N` entries in `<sys_root>/devices` (the original's
    /// `devicematch: nvidia-gpu`).
    JetsonGpu,
}

/// How a pooled device gets its stable ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdSource {
    /// A `by-id` link name if one points at the node, else the udev/USB
    /// serial, else the path.
    #[default]
    Auto,
    /// The path relative to the device root.
    Path,
}

/// One rule as written in the TOML file (`[[rules]]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Pooled resource: every match becomes a device of
    /// `smarter-devices/<name>`. Without it each match is its own resource
    /// named after its sanitized path (the original's behaviour).
    #[serde(default)]
    pub name: Option<String>,
    /// Regular expression on the path relative to the device root,
    /// unanchored unless written `^…$` (the original's `devicematch`).
    #[serde(default)]
    pub path: Option<String>,
    /// Glob on the path relative to the device root (`serial/by-id/*FTDI*`).
    #[serde(default)]
    pub glob: Option<String>,
    /// udev properties that must all match (values are globs), e.g.
    /// `{ SUBSYSTEM = "tty", ID_VENDOR_ID = "0403" }`.
    #[serde(default)]
    pub udev: BTreeMap<String, String>,
    /// How many containers may hold one device at once.
    #[serde(default = "one")]
    pub max_users: u32,
    /// cgroup device permissions: `r`, `w`, `m` (mknod) in any combination.
    #[serde(default = "rw")]
    pub permissions: String,
    /// Path of the node inside the container; `{path}` is the path relative
    /// to the device root, `{num}` its trailing number. Default `/dev/{path}`.
    #[serde(default)]
    pub container_path: Option<String>,
    /// More nodes that belong to each matched device (relative to the device
    /// root, `{num}` allowed), e.g. `["media{num}"]` with `video{num}`.
    #[serde(default)]
    pub with: Vec<String>,
    /// Environment variables set in the container; `{path}`, `{num}`, `{id}`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host paths bind-mounted into the container.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// CDI kind (`vendor.com/class`): Allocate then also names
    /// `vendor.com/class=<device id>` for runtimes with CDI enabled.
    #[serde(default)]
    pub cdi_kind: Option<String>,
    /// Where pooled device IDs come from.
    #[serde(default)]
    pub id: IdSource,
    /// Where devices come from.
    #[serde(default)]
    pub source: Source,
}

fn one() -> u32 {
    1
}

fn rw() -> String {
    "rw".to_string()
}

impl RuleConfig {
    /// A rule with only a path regex, as the original's list item.
    pub fn from_devicematch(devicematch: &str, nummaxdevices: u32) -> Self {
        let jetson = devicematch == "nvidia-gpu";
        Self {
            name: None,
            path: (!jetson).then(|| devicematch.to_string()),
            glob: None,
            udev: BTreeMap::new(),
            max_users: nummaxdevices,
            permissions: rw(),
            container_path: None,
            with: Vec::new(),
            env: BTreeMap::new(),
            mounts: Vec::new(),
            cdi_kind: None,
            id: IdSource::Auto,
            source: if jetson {
                Source::JetsonGpu
            } else {
                Source::Dev
            },
        }
    }
}

/// A bind mount added to every container that gets a device of the rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Absolute path on the host.
    pub host_path: String,
    /// Absolute path in the container.
    pub container_path: String,
    /// Mount read-only (default true).
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// The original's default `conf.yaml`, as `(devicematch, nummaxdevices)`.
pub const ORIGINAL_DEFAULT_RULES: &[(&str, u32)] = &[
    ("^snd$", 20),
    ("^gpiomem$", 40),
    ("^gpiochip[0-9]*$", 20),
    ("^hci[0-9]*$", 1),
    ("^i2c-[0-9]*$", 1),
    ("^rtc0$", 20),
    ("^video[0-9]*$", 20),
    ("^vchiq$", 20),
    ("^vcsm.*$", 20),
    ("^ttyUSB[0-9]*$", 1),
    ("^ttyACM[0-9]*$", 1),
    ("^ttyTHS[0-9]*$", 1),
    ("^ttyS[0-9]*$", 1),
    ("nvidia-gpu", 10),
];

impl Config {
    /// The rules in force: the configured ones or the original's defaults.
    pub fn effective_rules(&self) -> Vec<RuleConfig> {
        match &self.rules {
            Some(r) => r.clone(),
            None => ORIGINAL_DEFAULT_RULES
                .iter()
                .map(|(m, n)| RuleConfig::from_devicematch(m, *n))
                .collect(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [
            ("plugin_dir", &self.plugin_dir),
            ("dev_root", &self.dev_root),
            ("sys_root", &self.sys_root),
            ("udev_data_dir", &self.udev_data_dir),
        ] {
            if !path.is_absolute() {
                return Err(Invalid::new(
                    field,
                    path.display(),
                    "must be an absolute path",
                ));
            }
        }
        if !self.cdi_spec_dir.is_empty() && !self.cdi_spec_dir.starts_with('/') {
            return Err(Invalid::new(
                "cdi_spec_dir",
                &self.cdi_spec_dir,
                "must be an absolute path (e.g. /var/run/cdi) or empty",
            ));
        }
        if !self.metrics_address.is_empty()
            && self
                .metrics_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(Invalid::new(
                "metrics_address",
                &self.metrics_address,
                "must be ip:port, e.g. 127.0.0.1:9464, or empty",
            ));
        }
        if !self.rules_file.is_empty() {
            if !self.rules_file.starts_with('/') {
                return Err(Invalid::new(
                    "rules_file",
                    &self.rules_file,
                    "must be an absolute path or empty",
                ));
            }
            if self.rules.is_some() {
                return Err(Invalid::new(
                    "rules_file",
                    &self.rules_file,
                    "set together with [[rules]]; use one of them",
                ));
            }
        }
        crate::rules::compile(&self.effective_rules(), "rules").map(|_| ())
    }
}

/// One item of the original `conf.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginalItem {
    devicematch: String,
    nummaxdevices: u32,
}

/// Which syntax a config file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Our TOML.
    Toml,
    /// The original `conf.yaml` list.
    OriginalYaml,
}

/// Decide the syntax from the file name, then from the content.
pub fn detect_format(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => return Format::OriginalYaml,
        Some("toml") => return Format::Toml,
        _ => {}
    }
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    match first {
        Some(l) if l.starts_with('-') || l.starts_with('[') && !l.starts_with("[[") => {
            // `- devicematch:` or a YAML flow list `[ {…} ]`; TOML tables
            // start with `[name]`, so tell them apart by a `{`.
            if l.starts_with('-') || l.contains('{') {
                Format::OriginalYaml
            } else {
                Format::Toml
            }
        }
        _ => Format::Toml,
    }
}

/// Parse config text in either syntax; `path` names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    match detect_format(path, text) {
        Format::Toml => smarter_common::config::parse(path, text),
        Format::OriginalYaml => parse_original(path, text),
    }
}

/// Read and parse a config file in either syntax.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut config = parse(path, &text)?;
    if !config.rules_file.is_empty() {
        // Errors name the rules file, its line and the item's field.
        let rules_path = PathBuf::from(&config.rules_file);
        let rules_text =
            std::fs::read_to_string(&rules_path).map_err(|source| ConfigError::Read {
                path: rules_path.clone(),
                source,
            })?;
        config.rules = parse_original(&rules_path, &rules_text)?.rules;
    }
    Ok(config)
}

/// Load `path` if given, else the default path if it exists, else defaults.
pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
    let default = Path::new(DEFAULT_CONFIG_PATH);
    match path {
        Some(p) => load(p),
        None if default.exists() => load(default),
        None => {
            let c = Config::default();
            c.validate().map_err(|invalid| ConfigError::Invalid {
                path: PathBuf::from("<built-in defaults>"),
                invalid,
            })?;
            Ok(c)
        }
    }
}

fn parse_original(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let items: Vec<OriginalItem> = serde_norway::from_str(text).map_err(|e| {
        let loc = e.location();
        ConfigError::Parse {
            path: path.to_path_buf(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            field: None,
            message: e
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid YAML")
                .to_string(),
        }
    })?;
    let rules: Vec<RuleConfig> = items
        .iter()
        .map(|i| RuleConfig::from_devicematch(&i.devicematch, i.nummaxdevices))
        .collect();
    // Name fields the way the user wrote them: `[2].devicematch`.
    crate::rules::compile(&rules, "").map_err(|mut invalid| {
        invalid.field = invalid
            .field
            .replace(".path", ".devicematch")
            .replace(".max_users", ".nummaxdevices");
        ConfigError::Invalid {
            path: path.to_path_buf(),
            invalid,
        }
    })?;
    Ok(Config {
        rules: Some(rules),
        ..Config::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(path: &str, text: &str) -> String {
        match parse(Path::new(path), text) {
            Ok(c) => format!("parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn detects_formats() {
        assert_eq!(
            detect_format(Path::new("a/conf.yaml"), ""),
            Format::OriginalYaml
        );
        assert_eq!(
            detect_format(Path::new("conf"), "# c\n- devicematch: x\n"),
            Format::OriginalYaml
        );
        assert_eq!(
            detect_format(Path::new("conf"), "[{devicematch: x, nummaxdevices: 1}]"),
            Format::OriginalYaml
        );
        assert_eq!(
            detect_format(Path::new("conf"), "[[rules]]\n"),
            Format::Toml
        );
        assert_eq!(
            detect_format(Path::new("conf"), "plugin_dir = \"/x\"\n"),
            Format::Toml
        );
    }

    #[test]
    fn original_yaml_becomes_rules() -> Result<(), ConfigError> {
        let c = parse(
            Path::new("conf.yaml"),
            "- devicematch: ^snd$\n  nummaxdevices: 20\n- devicematch: nvidia-gpu\n  nummaxdevices: 10\n",
        )?;
        let rules = c.effective_rules();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].path.as_deref(), Some("^snd$"));
        assert_eq!(rules[0].max_users, 20);
        assert_eq!(rules[1].source, Source::JetsonGpu);
        Ok(())
    }

    #[test]
    fn original_bad_regex_names_item() {
        let e = err(
            "conf.yaml",
            "- devicematch: \"^tty[\"\n  nummaxdevices: 1\n",
        );
        assert!(e.contains("[0].devicematch"), "{e}");
        assert!(e.contains("^tty["), "{e}");
    }

    #[test]
    fn original_zero_users_rejected() {
        let e = err(
            "conf.yaml",
            "- devicematch: ^ttyUSB0$\n  nummaxdevices: 0\n",
        );
        assert!(e.contains("[0].nummaxdevices"), "{e}");
    }

    #[test]
    fn original_unknown_field_names_line() {
        let e = err(
            "conf.yaml",
            "- devicematch: x\n  nummaxdevices: 1\n  nummax: 2\n",
        );
        assert!(e.starts_with("config conf.yaml:"), "{e}");
        assert!(e.contains("nummax"), "{e}");
    }

    #[test]
    fn toml_long_pool_name_rejected() {
        let name = "a".repeat(64);
        let e = err(
            "x.toml",
            &format!("[[rules]]\nname = \"{name}\"\npath = \"^ttyUSB\"\n"),
        );
        assert!(e.contains("rules[0].name"), "{e}");
        assert!(e.contains("63"), "{e}");
    }

    #[test]
    fn toml_unknown_field_rejected() {
        let e = err("x.toml", "[[rules]]\npath = \"x\"\nmax_user = 2\n");
        assert!(e.contains("x.toml:3:1"), "{e}");
        assert!(e.contains("max_user"), "{e}");
    }

    #[test]
    fn hotplug_source_field() -> Result<(), ConfigError> {
        assert_eq!(Config::default().hotplug, Hotplug::Auto);
        let c = parse(Path::new("x.toml"), "hotplug = \"udev\"\n")?;
        assert_eq!(c.hotplug, Hotplug::Udev);
        let c = parse(Path::new("x.toml"), "hotplug = \"inotify\"\n")?;
        assert_eq!(c.hotplug, Hotplug::Inotify);
        let e = err("x.toml", "hotplug = \"netlink\"\n");
        assert!(e.contains("x.toml:1:"), "{e}");
        assert!(e.contains("netlink"), "{e}");
        Ok(())
    }

    #[test]
    fn defaults_are_the_original_rules() {
        let c = Config::default();
        assert_eq!(c.effective_rules().len(), ORIGINAL_DEFAULT_RULES.len());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn sample_configs_are_valid() -> Result<(), ConfigError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        load(&dir.join("smarter-device-manager.toml"))?;
        load(&dir.join("conf.yaml"))?;
        Ok(())
    }

    #[test]
    fn rules_file_brings_original_rules_to_a_toml_config() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let rules = dir.path().join("conf.yaml");
        std::fs::write(&rules, "- devicematch: ^snd$\n  nummaxdevices: 20\n")?;
        let toml = dir.path().join("device-manager.toml");
        std::fs::write(
            &toml,
            format!(
                "metrics_address = \"127.0.0.1:9464\"\nrules_file = \"{}\"\n",
                rules.display()
            ),
        )?;
        let c = load(&toml)?;
        assert_eq!(c.metrics_address, "127.0.0.1:9464");
        assert_eq!(
            c.rules,
            Some(vec![RuleConfig::from_devicematch("^snd$", 20)])
        );
        // A broken rules file is reported with its own name and field.
        std::fs::write(&rules, "- devicematch: ^snd$\n  nummaxdevices: 0\n")?;
        let e = load(&toml).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("conf.yaml") && e.contains("nummaxdevices"),
            "{e}"
        );
        std::fs::remove_file(&rules)?;
        let e = load(&toml).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("conf.yaml"), "{e}");
        Ok(())
    }

    #[test]
    fn rules_file_must_be_absolute_and_alone() {
        let e = err("a.toml", "rules_file = \"conf.yaml\"\n");
        assert!(e.contains("rules_file") && e.contains("absolute"), "{e}");
        let e = err(
            "a.toml",
            "rules_file = \"/etc/conf.yaml\"\n[[rules]]\npath = \"^snd$\"\n",
        );
        assert!(e.contains("rules_file") && e.contains("[[rules]]"), "{e}");
    }
}
