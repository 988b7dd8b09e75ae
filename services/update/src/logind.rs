//! Rebooting the host through systemd-logind over D-Bus.
//!
//! `org.freedesktop.login1.Manager.Reboot(b interactive)` on the system bus,
//! with `interactive = false`: the agent runs as root, which logind's polkit
//! policy allows without asking anyone. Going through logind (rather than
//! `systemctl reboot` in the container) needs only the D-Bus socket in the
//! pod, not the host's systemd private socket or a privileged container.

/// logind's bus name.
pub const SERVICE: &str = "org.freedesktop.login1";

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Manager {
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

/// logind did not accept the reboot.
#[derive(Debug, thiserror::Error)]
#[error("cannot reboot through {SERVICE} (D-Bus): {source}")]
pub struct RebootError {
    /// Why.
    #[source]
    pub source: zbus::Error,
}

/// Ask logind to reboot the host now.
pub async fn reboot(connection: &zbus::Connection) -> Result<(), RebootError> {
    let manager = ManagerProxy::builder(connection)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|source| RebootError { source })?;
    tracing::warn!("asking logind to reboot the host");
    manager
        .reboot(false)
        .await
        .map_err(|source| RebootError { source })
}
