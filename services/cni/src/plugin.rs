//! One plugin invocation: environment + stdin in, JSON out.

use serde_json::Value;
use smarter_common::records::{self, Record};

use crate::netconf::{self, Ipam, Mode, NetConf};
use crate::spec::{self, CniError, CniResult, Command, Env, code};
use crate::{docker, ipam, native};

/// What to print and how to exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout, if any.
    pub stdout: Option<Value>,
    /// Process exit status.
    pub exit_code: u8,
}

/// Run one invocation. `get_env` reads the CNI environment.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let version = netconf::peek_version(stdin)
        .filter(|v| spec::is_supported(v))
        .unwrap_or_else(|| spec::SPEC_VERSION.to_string());
    let env = match Env::from_lookup(&get_env) {
        Ok(e) => e,
        Err(e) => return failure(&e, &version),
    };
    if env.command == Command::Version {
        let asked = netconf::peek_version(stdin).unwrap_or_else(|| spec::SPEC_VERSION.to_string());
        return Outcome {
            stdout: Some(spec::version_answer(&asked)),
            exit_code: 0,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return failure(&e, &version),
    };
    match dispatch(&conf, &env, stdin) {
        Ok(Some(result)) => Outcome {
            stdout: Some(result.to_json(&conf.cni_version)),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: None,
            exit_code: 0,
        },
        Err(e) => {
            tracing::warn!(command = env.command.as_str(), container = %env.container_id, error = %e, "failed");
            failure(&e, &conf.cni_version)
        }
    }
}

fn failure(e: &CniError, version: &str) -> Outcome {
    Outcome {
        stdout: Some(e.to_json(version)),
        exit_code: 1,
    }
}

fn require(conf: &NetConf, command: Command, min: &str) -> Result<(), CniError> {
    if spec::at_least(&conf.cni_version, min) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} does not allow {} (needs {min} or later)",
                conf.cni_version,
                command.as_str()
            ),
        ))
    }
}

fn dispatch(conf: &NetConf, env: &Env, stdin: &[u8]) -> Result<Option<CniResult>, CniError> {
    if conf.isolation.enabled && !matches!(conf.ipam, Ipam::Builtin(_)) {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "isolation needs the built-in IPAM (it knows each address's namespace)",
        ));
    }
    match env.command {
        Command::Version => Ok(None),
        Command::Add => {
            let prev = conf
                .prev_result
                .as_ref()
                .map(CniResult::from_json)
                .transpose()?;
            let mut result = match conf.mode {
                Mode::Native => native::add(conf, env, stdin)?,
                Mode::Docker => docker::add(conf, env)?,
            };
            write_record(conf, env, &result);
            if let Some(prev) = prev {
                result = chain(prev, result);
            }
            Ok(Some(result))
        }
        Command::Del => {
            match conf.mode {
                Mode::Native => native::del(conf, env, stdin)?,
                Mode::Docker => docker::del(conf, env)?,
            }
            if let Err(e) = records::remove(&conf.records_dir, &env.container_id, &env.ifname) {
                tracing::warn!(error = %e, "cannot remove DNS record");
            }
            Ok(None)
        }
        Command::Check => {
            require(conf, Command::Check, "0.4.0")?;
            let prev = conf
                .prev_result
                .as_ref()
                .map(CniResult::from_json)
                .transpose()?;
            match conf.mode {
                Mode::Native => native::check(conf, env, stdin, prev.as_ref())?,
                Mode::Docker => docker::check(conf, env)?,
            }
            Ok(None)
        }
        Command::Gc => {
            require(conf, Command::Gc, "1.1.0")?;
            let valid: Vec<(String, String)> = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            match (&conf.mode, &conf.ipam) {
                (Mode::Native, Ipam::Builtin(b)) => {
                    let report = native::gc(conf, &valid, Some(b))?;
                    tracing::info!(
                        released = report.released.len(),
                        links = report.links.len(),
                        "gc"
                    );
                }
                (Mode::Native, Ipam::Delegate(p)) => {
                    // Best effort: older IPAM plugins predate GC.
                    let gc = crate::delegate::find(p, &env.path)
                        .and_then(|bin| crate::delegate::exec(&bin, "GC", env, stdin));
                    if let Err(e) = gc {
                        tracing::warn!(ipam = %p, error = %e, "delegated GC failed");
                    }
                    native::gc(conf, &valid, None)?;
                }
                (Mode::Docker, _) => docker_gc(conf, env, &valid),
            }
            gc_records(conf, &valid);
            Ok(None)
        }
        Command::Status => {
            require(conf, Command::Status, "1.1.0")?;
            status(conf)?;
            Ok(None)
        }
    }
}

/// Chain our result after a previous plugin's: its interfaces first, our
/// interface indexes shifted.
fn chain(prev: CniResult, ours: CniResult) -> CniResult {
    let shift = prev.interfaces.len();
    let mut out = prev;
    out.interfaces.extend(ours.interfaces);
    out.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    out.routes.extend(ours.routes);
    if out.dns.is_empty() {
        out.dns = ours.dns;
    }
    out
}

fn write_record(conf: &NetConf, env: &Env, result: &CniResult) {
    let record = Record {
        version: records::VERSION,
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        network: conf.name.clone(),
        pod_name: env.pod_name().map(str::to_string),
        namespace: env.pod_namespace().map(str::to_string),
        hostname: None,
        ips: result.ips.iter().filter_map(spec::IpConfig::ip).collect(),
    };
    // Never fail an ADD because names are unavailable: log and go on.
    if let Err(e) = records::write(&conf.records_dir, &record) {
        tracing::warn!(error = %e, "cannot write DNS record");
    }
}

/// Docker mode keeps no state of its own: the records say which containers
/// this plugin attached, so only those are disconnected (other containers on
/// the same Docker network are left alone).
fn docker_gc(conf: &NetConf, env: &Env, valid: &[(String, String)]) {
    let Ok(all) = records::read_dir(&conf.records_dir) else {
        return;
    };
    for r in all.into_iter().flatten() {
        let known = valid
            .iter()
            .any(|(id, ifn)| *id == r.container_id && *ifn == r.ifname);
        if r.network == conf.name && !known {
            let stale = Env {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
                ..env.clone()
            };
            if let Err(e) = docker::del(conf, &stale) {
                tracing::warn!(container = %r.container_id, error = %e, "gc: cannot disconnect");
            }
        }
    }
}

fn gc_records(conf: &NetConf, valid: &[(String, String)]) {
    let Ok(all) = records::read_dir(&conf.records_dir) else {
        return;
    };
    for r in all.into_iter().flatten() {
        let known = valid
            .iter()
            .any(|(id, ifn)| *id == r.container_id && *ifn == r.ifname);
        if r.network == conf.name && !known {
            let _ = records::remove(&conf.records_dir, &r.container_id, &r.ifname);
        }
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    match (&conf.mode, &conf.ipam) {
        (Mode::Docker, _) => docker::status(conf),
        (Mode::Native, Ipam::Builtin(b)) => {
            let store = ipam::Store::open(&b.data_dir, &conf.name).map_err(|e| {
                CniError::new(code::NOT_AVAILABLE, "IPAM state is not usable")
                    .with_details(e.to_string())
            })?;
            let used = store.list().map_err(|e| {
                CniError::new(code::NOT_AVAILABLE, "IPAM state is not readable")
                    .with_details(e.to_string())
            })?;
            let size = u64::from(u32::from(b.range_end) - u32::from(b.range_start)) + 1;
            let reserved = u64::from((b.range_start..=b.range_end).contains(&b.gateway));
            if used.len() as u64 + reserved >= size {
                return Err(CniError::new(
                    code::LIMITED_RESOURCES,
                    "no free address in the range",
                ));
            }
            Ok(())
        }
        (Mode::Native, Ipam::Delegate(_)) => Ok(()),
    }
}

/// Convenience for the binary: the real environment.
pub fn run_process(stdin: &[u8]) -> Outcome {
    run(|k| std::env::var(k).ok(), stdin)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::spec::{Dns, Interface, IpConfig, Route};

    fn invoke(env: &[(&str, &str)], stdin: &str) -> String {
        let m: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = run(|k| m.get(k).cloned(), stdin.as_bytes());
        let json = out
            .stdout
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_default();
        format!("exit {}\n{json}\n", out.exit_code)
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
    ];

    #[test]
    fn version_answers() {
        let env = [("CNI_COMMAND", "VERSION")];
        crate::golden(
            "version-1.0.0.out",
            &invoke(&env, r#"{"cniVersion":"1.0.0"}"#),
        );
        crate::golden("version-empty.out", &invoke(&env, ""));
    }

    #[test]
    fn error_objects() {
        crate::golden("error-decode.out", &invoke(ADD_ENV, "{"));
        crate::golden(
            "error-version.out",
            &invoke(
                ADD_ENV,
                r#"{"cniVersion":"0.2.0","name":"n","type":"smarter-cni"}"#,
            ),
        );
        crate::golden(
            "error-env.out",
            &invoke(
                &ADD_ENV[..3],
                r#"{"cniVersion":"1.1.0","name":"n","type":"smarter-cni"}"#,
            ),
        );
        let check = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        crate::golden(
            "error-check-0.3.1.out",
            &invoke(
                &check,
                r#"{"cniVersion":"0.3.1","name":"n","type":"smarter-cni"}"#,
            ),
        );
        crate::golden(
            "error-unsupported-field.out",
            &invoke(
                ADD_ENV,
                r#"{"cniVersion":"1.1.0","name":"n","type":"smarter-cni","macspoofchk":true}"#,
            ),
        );
    }

    #[test]
    fn results_per_version() {
        let r = CniResult {
            interfaces: vec![
                Interface {
                    name: "smartnet0".into(),
                    mac: Some("02:42:ac:27:00:01".into()),
                    sandbox: None,
                    mtu: Some(1500),
                },
                Interface {
                    name: "veth0a1b2c3d".into(),
                    mac: Some("6e:11:22:33:44:55".into()),
                    sandbox: None,
                    mtu: Some(1500),
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("6e:11:22:33:44:66".into()),
                    sandbox: Some("/var/run/netns/x".into()),
                    mtu: Some(1500),
                },
            ],
            ips: vec![IpConfig {
                address: "172.39.0.2/16".into(),
                gateway: "172.39.0.1".parse().ok(),
                interface: Some(2),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: "172.39.0.1".parse().ok(),
            }],
            dns: Dns::default(),
        };
        for v in spec::SUPPORTED_VERSIONS {
            let text = serde_json::to_string_pretty(&r.to_json(v)).unwrap_or_default() + "\n";
            crate::golden(&format!("result-{v}.json"), &text);
        }
    }

    #[test]
    fn chaining_shifts_interface_indexes() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "lo".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ours = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/24".into(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        };
        let c = chain(prev, ours);
        assert_eq!(c.interfaces.len(), 2);
        assert_eq!(c.ips[0].interface, Some(1));
    }
}
