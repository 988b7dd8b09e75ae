//! The host's RAUC, asked over D-Bus.
//!
//! RAUC's service (`rauc service`, on the system bus as `de.pengutronix.rauc`)
//! exports `de.pengutronix.rauc.Installer` at `/`. The agent uses:
//!
//! * `InstallBundle(s source, a{sv} args)`: starts an installation into the
//!   other slot and returns at once; the outcome is the `Completed(i result)`
//!   signal (0 = success), the reason for a failure the `LastError` property,
//!   and `Progress (isi)` (percent, message, nesting depth) changes on the way.
//! * `GetSlotStatus() -> a(sa{sv})`: every slot with its `state` (`booted`,
//!   `active`, `inactive`), `boot-status` (`good` / `bad`, from the
//!   bootloader) and the installed bundle's `bundle.version`.
//! * properties `Operation`, `LastError`, `Progress`, `Compatible`, `BootSlot`
//!   and `GetPrimary()`.
//!
//! Property reads are not cached: `LastError` must be read after `Completed`,
//! and a cache fed by `PropertiesChanged` could lag behind that signal.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::{OwnedValue, Value};

/// RAUC's bus name.
pub const SERVICE: &str = "de.pengutronix.rauc";
/// RAUC's installer interface.
pub const INTERFACE: &str = "de.pengutronix.rauc.Installer";

#[zbus::proxy(
    interface = "de.pengutronix.rauc.Installer",
    default_service = "de.pengutronix.rauc",
    default_path = "/"
)]
trait Installer {
    fn install_bundle(&self, source: &str, args: HashMap<&str, Value<'_>>) -> zbus::Result<()>;

    fn get_slot_status(&self) -> zbus::Result<Vec<(String, HashMap<String, OwnedValue>)>>;

    fn get_primary(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn completed(&self, result: i32) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn last_error(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn progress(&self) -> zbus::Result<(i32, String, i32)>;

    #[zbus(property)]
    fn compatible(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn boot_slot(&self) -> zbus::Result<String>;
}

/// What went wrong talking to RAUC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaucError {
    /// RAUC could not be reached or a call failed on the bus.
    #[error("RAUC ({SERVICE}) over D-Bus: {what}: {source}")]
    Bus {
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: zbus::Error,
    },
    /// RAUC refused to start the installation (busy, missing file...).
    #[error("RAUC refused to install {bundle}: {message}")]
    Refused {
        /// The bundle.
        bundle: String,
        /// RAUC's message.
        message: String,
    },
    /// The installation ran and failed; the running system is untouched.
    #[error("RAUC failed to install {bundle} (result {result}): {last_error}")]
    InstallFailed {
        /// The bundle.
        bundle: String,
        /// `Completed`'s result.
        result: i32,
        /// RAUC's `LastError`.
        last_error: String,
    },
    /// No `Completed` within the allowed time.
    #[error("RAUC did not complete installing {bundle} within {} s", .timeout.as_secs())]
    Timeout {
        /// The bundle.
        bundle: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// `GetSlotStatus` names no booted slot.
    #[error("RAUC reports no booted slot (BootSlot {boot_slot:?})")]
    NoBootedSlot {
        /// The `BootSlot` property.
        boot_slot: String,
    },
}

/// An installation's progress, RAUC's `Progress` property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// 0 to 100.
    pub percent: i32,
    /// What RAUC is doing.
    pub message: String,
    /// How deep in RAUC's steps the message is.
    pub depth: i32,
}

/// One slot as `GetSlotStatus` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slot {
    /// RAUC's slot name, e.g. `rootfs.0`.
    pub name: String,
    /// The bootloader's name for it, e.g. `A`.
    pub bootname: Option<String>,
    /// `booted`, `active` or `inactive`.
    pub state: Option<String>,
    /// `good` or `bad`, as the bootloader (or `rauc status mark-*`) says.
    pub boot_status: Option<String>,
    /// The version of the bundle installed into the slot.
    pub bundle_version: Option<String>,
    /// The compatible string of that bundle.
    pub bundle_compatible: Option<String>,
    /// When it was installed.
    pub installed_timestamp: Option<String>,
}

impl Slot {
    /// Whether the bootloader counts this slot as good.
    pub fn is_good(&self) -> bool {
        self.boot_status.as_deref() == Some("good")
    }
}

/// The slots and which one is booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// RAUC's `BootSlot` (the bootname of the booted slot).
    pub boot_slot: String,
    /// RAUC's `Compatible`.
    pub compatible: String,
    /// Every slot.
    pub slots: Vec<Slot>,
}

impl SlotStatus {
    /// The booted slot: `state = booted`, else the slot whose bootname is
    /// `BootSlot`.
    pub fn booted(&self) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.state.as_deref() == Some("booted"))
            .or_else(|| {
                self.slots
                    .iter()
                    .find(|s| s.bootname.as_deref() == Some(self.boot_slot.as_str()))
            })
    }
}

/// A client of the host's RAUC.
#[derive(Debug, Clone)]
pub struct Rauc {
    installer: InstallerProxy<'static>,
    properties: zbus::fdo::PropertiesProxy<'static>,
}

fn bus(what: &'static str) -> impl FnOnce(zbus::Error) -> RaucError {
    move |source| RaucError::Bus { what, source }
}

impl Rauc {
    /// A client on `connection` (the system bus on a gateway).
    pub async fn new(connection: &zbus::Connection) -> Result<Self, RaucError> {
        let installer = InstallerProxy::builder(connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(bus("connect"))?;
        let properties = zbus::fdo::PropertiesProxy::builder(connection)
            .destination(SERVICE)
            .map_err(bus("connect"))?
            .path("/")
            .map_err(bus("connect"))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(bus("connect"))?;
        Ok(Self {
            installer,
            properties,
        })
    }

    /// Install `source` (a bundle's path on the host, as RAUC sees it, or with
    /// streaming its http(s) URL) and wait up to
    /// `timeout` for RAUC's `Completed`; `progress` gets every `Progress`
    /// change on the way.
    pub async fn install(
        &self,
        source: &str,
        timeout: Duration,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), RaucError> {
        let source = source.to_string();
        // Subscribe before asking, so neither signal can be missed.
        let mut completed = self
            .installer
            .receive_completed()
            .await
            .map_err(bus("subscribe to Completed"))?;
        let mut changes = self
            .properties
            .receive_properties_changed()
            .await
            .map_err(bus("subscribe to PropertiesChanged"))?;
        tracing::info!(bundle = %source, "asking RAUC to install");
        match self.installer.install_bundle(&source, HashMap::new()).await {
            Ok(()) => {}
            Err(zbus::Error::MethodError(name, message, _)) => {
                return Err(RaucError::Refused {
                    bundle: source,
                    message: message.unwrap_or_else(|| name.to_string()),
                });
            }
            Err(e) => return Err(bus("InstallBundle")(e)),
        }
        let wait = async {
            loop {
                // Progress first: RAUC sends its last Progress change before
                // Completed, and both streams are fed in the bus's order.
                tokio::select! {
                    biased;
                    Some(change) = changes.next() => {
                        let Ok(args) = change.args() else { continue };
                        if args.interface_name.as_str() != INTERFACE {
                            continue;
                        }
                        if let Some(value) = args.changed_properties.get("Progress")
                            && let Some(p) = progress_from(value)
                        {
                            tracing::info!(percent = p.percent, message = %p.message, "RAUC progress");
                            progress(p);
                        }
                    }
                    signal = completed.next() => {
                        let Some(signal) = signal else {
                            return Err(RaucError::Bus {
                                what: "wait for Completed",
                                source: zbus::Error::Failure("the bus connection closed".into()),
                            });
                        };
                        let result = signal.args().map_err(bus("read Completed"))?.result;
                        return Ok(result);
                    }
                }
            }
        };
        let result = match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(RaucError::Timeout {
                    bundle: source,
                    timeout,
                });
            }
        };
        if result == 0 {
            tracing::info!(bundle = %source, "RAUC installed the bundle");
            return Ok(());
        }
        let last_error = self.last_error().await.unwrap_or_else(|e| e.to_string());
        tracing::error!(bundle = %source, result, %last_error, "RAUC failed to install");
        Err(RaucError::InstallFailed {
            bundle: source,
            result,
            last_error,
        })
    }

    /// RAUC's `LastError`.
    pub async fn last_error(&self) -> Result<String, RaucError> {
        self.installer
            .last_error()
            .await
            .map_err(bus("read LastError"))
    }

    /// RAUC's `Operation` (`idle`, `installing`).
    pub async fn operation(&self) -> Result<String, RaucError> {
        self.installer
            .operation()
            .await
            .map_err(bus("read Operation"))
    }

    /// RAUC's `Progress`.
    pub async fn progress(&self) -> Result<Progress, RaucError> {
        let (percent, message, depth) = self
            .installer
            .progress()
            .await
            .map_err(bus("read Progress"))?;
        Ok(Progress {
            percent,
            message,
            depth,
        })
    }

    /// `GetPrimary()`: the slot the bootloader will boot next.
    pub async fn primary(&self) -> Result<String, RaucError> {
        self.installer
            .get_primary()
            .await
            .map_err(bus("GetPrimary"))
    }

    /// `BootSlot`, `Compatible` and `GetSlotStatus()`.
    pub async fn slot_status(&self) -> Result<SlotStatus, RaucError> {
        let boot_slot = self
            .installer
            .boot_slot()
            .await
            .map_err(bus("read BootSlot"))?;
        let compatible = self
            .installer
            .compatible()
            .await
            .map_err(bus("read Compatible"))?;
        let raw = self
            .installer
            .get_slot_status()
            .await
            .map_err(bus("GetSlotStatus"))?;
        let slots = raw
            .into_iter()
            .map(|(name, fields)| {
                let text = |key: &str| fields.get(key).and_then(|v| string(v));
                Slot {
                    bootname: text("bootname"),
                    state: text("state"),
                    boot_status: text("boot-status"),
                    bundle_version: text("bundle.version"),
                    bundle_compatible: text("bundle.compatible"),
                    installed_timestamp: text("installed.timestamp"),
                    name,
                }
            })
            .collect();
        Ok(SlotStatus {
            boot_slot,
            compatible,
            slots,
        })
    }

    /// The booted slot.
    pub async fn booted(&self) -> Result<Slot, RaucError> {
        let status = self.slot_status().await?;
        status.booted().cloned().ok_or(RaucError::NoBootedSlot {
            boot_slot: status.boot_slot,
        })
    }
}

fn string(value: &Value<'_>) -> Option<String> {
    match value {
        Value::Str(s) => Some(s.to_string()),
        Value::Value(inner) => string(inner),
        _ => None,
    }
}

fn progress_from(value: &Value<'_>) -> Option<Progress> {
    match value {
        Value::Structure(s) => match s.fields() {
            [Value::I32(percent), Value::Str(message), Value::I32(depth)] => Some(Progress {
                percent: *percent,
                message: message.to_string(),
                depth: *depth,
            }),
            _ => None,
        },
        Value::Value(inner) => progress_from(inner),
        _ => None,
    }
}
