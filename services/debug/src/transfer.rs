//! Sizes and algorithms for moving bulk data (scp, sftp) through comms and
//! the agent, shared by both so every hop agrees. Why these values:
//! `docs/decisions/0130-debug-scp-throughput.md`.
//!
//! Memory: russh opens the window again as soon as a packet arrives, not when
//! it has been consumed; what bounds a channel's memory is its queue of
//! received packets ([`CHANNEL_BUFFER`] packets of at most [`MAX_PACKET`]
//! bytes): when it is full the connection stops reading its socket and TCP
//! pushes back. So a channel queues at most `CHANNEL_BUFFER * MAX_PACKET`
//! (2 MiB) of received data, and a session at comms (the developer's channel
//! and the agent's) at most 4 MiB, less than the 6.25 MiB of russh's defaults
//! (100 packets of 32 KiB per channel).

use std::borrow::Cow;

use russh::cipher;

/// Channel window we grant peers: what they may send before we open it
/// again. 2 MiB, as OpenSSH's own channels and russh's default; stated here
/// so every hop is seen to agree.
pub const WINDOW: u32 = 2 * 1024 * 1024;

/// Largest channel data packet we accept. OpenSSH uses 32 KiB; with 64 KiB
/// the agent's inner SSH packets (just over 32 KiB each, the developer's
/// client asks for 32 KiB of payload) travel the tunnel whole, instead of as
/// a 32 KiB packet plus a 45-byte one, and every hop handles half as many
/// packets. 65535 is russh's ceiling.
pub const MAX_PACKET: u32 = 65535;

/// Received packets queued per channel before the connection stops reading
/// (see the module docs for the memory this bounds).
pub const CHANNEL_BUFFER: usize = 32;

// The bound the module docs promise.
const _: () = assert!(CHANNEL_BUFFER * MAX_PACKET as usize <= 2 * 1024 * 1024);

/// Read buffer on each SSH connection's socket: russh reads a packet as two
/// exact reads (length, then body), which this turns into about one `recv`
/// per 64 KiB.
pub const READ_BUFFER: usize = 64 * 1024;

/// The cipher preference for the agent's tunnel to comms, where we choose
/// both ends: AES-256-GCM first where the CPU has AES and carry-less
/// multiply instructions (x86-64 AES-NI + PCLMULQDQ, Armv8 AES + PMULL), as
/// it then costs a fraction of ChaCha20-Poly1305; otherwise russh's default
/// order, ChaCha20-Poly1305 first (e.g. on the Raspberry Pi 4, whose
/// Cortex-A72 lacks the AES instructions). Both are AEADs OpenSSH offers by
/// default; the developer's own hops keep whatever their client prefers.
pub fn tunnel_ciphers() -> Cow<'static, [cipher::Name]> {
    const AES_FIRST: &[cipher::Name] = &[
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ];
    if aes_in_hardware() {
        Cow::Borrowed(AES_FIRST)
    } else {
        russh::Preferred::default().cipher
    }
}

/// The ciphers the agent's SSH server offers developers (the inner session,
/// end to end from the developer's client to the gateway). A client's order
/// decides, and OpenSSH's puts ChaCha20-Poly1305 first; russh's
/// ChaCha20-Poly1305 is ring's OpenSSH construction, whose Poly1305 is
/// portable C on x86-64 and aarch64, its AES-GCM ring's assembly, so
/// where the gateway has AES hardware and `aes_gcm_only` is set (the
/// default) only AES-GCM is offered: the agent then spends about 40 % less
/// CPU per MiB on a download and the developer's `ssh` decrypts with AES-NI
/// too. Every OpenSSH client since 6.2 offers AES-GCM by default; a client
/// that offers neither AES-GCM cipher cannot connect, which is what setting
/// `aes_gcm_only` to false is for. Without AES hardware: russh's default
/// order (ChaCha20-Poly1305 first), as on the tunnel.
pub fn session_ciphers(aes_gcm_only: bool) -> Cow<'static, [cipher::Name]> {
    const AES_GCM: &[cipher::Name] = &[cipher::AES_256_GCM, cipher::AES_128_GCM];
    if aes_gcm_only && aes_in_hardware() {
        Cow::Borrowed(AES_GCM)
    } else {
        russh::Preferred::default().cipher
    }
}

/// The identification line the agent sends comms (RFC 4253 4.2), so comms
/// can tell an agent's tunnel from a developer's client before the key
/// exchange and offer each its ciphers (see the comms config
/// `aes_gcm_only`). It identifies, it does not authenticate: a client that
/// claims it only gets ChaCha20-Poly1305 offered as well.
pub const AGENT_SSH_ID: &str = concat!("SSH-2.0-smarter-debug-agent_", env!("CARGO_PKG_VERSION"));

/// Whether identification line `id` (without its line end) is an agent's:
/// ours, or russh's default one, which agents sent before they named
/// themselves (so a fleet mid-upgrade keeps its tunnels' ciphers).
pub fn is_agent_id(id: &[u8]) -> bool {
    id.starts_with(b"SSH-2.0-smarter-debug-agent_") || id.starts_with(b"SSH-2.0-russh_")
}

/// Whether this CPU accelerates AES-GCM.
pub fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_ciphers_keep_chacha_and_lead_with_aes_only_with_hardware() {
        let list = tunnel_ciphers();
        assert!(list.contains(&cipher::CHACHA20_POLY1305));
        assert!(list.contains(&cipher::AES_256_GCM));
        let first = list.first().copied();
        if aes_in_hardware() {
            assert_eq!(first, Some(cipher::AES_256_GCM));
        } else {
            assert_eq!(first, Some(cipher::CHACHA20_POLY1305));
        }
    }

    #[test]
    fn session_ciphers_drop_chacha_only_with_hardware_and_when_asked() {
        let lenient = session_ciphers(false);
        assert_eq!(lenient.first().copied(), Some(cipher::CHACHA20_POLY1305));
        let strict = session_ciphers(true);
        if aes_in_hardware() {
            assert_eq!(&*strict, &[cipher::AES_256_GCM, cipher::AES_128_GCM][..]);
        } else {
            assert_eq!(strict, lenient);
        }
    }

    #[test]
    fn agents_are_told_apart_by_their_identification_line() {
        assert!(is_agent_id(AGENT_SSH_ID.as_bytes()));
        assert!(is_agent_id(b"SSH-2.0-russh_0.65.1"));
        assert!(!is_agent_id(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"));
        assert!(!is_agent_id(b"SSH-2.0-PuTTY_Release_0.81"));
        assert!(!is_agent_id(b"smarter-debug-agent"));
        assert!(!is_agent_id(b""));
    }
}
