//! systemd's readiness protocol (`sd_notify`, `Type=notify`): `READY=1` once every listener is
//! bound and the grants are restored, `RELOADING=1` … `READY=1` around a SIGHUP reload,
//! `STOPPING=1` when a stop begins (the unit is `Type=notify` with `ExecReload=kill -HUP`, so
//! `RELOADING=1` needs no `MONOTONIC_USEC`). A datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace); without that variable (not under systemd) nothing is sent. A failed send
//! is logged once and never stops the gateway.

use std::os::unix::net::UnixDatagram;

/// Send `state` (newline-separated `KEY=VALUE` lines) to systemd, if it is listening.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)
        } else {
            s.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = ?path, "cannot tell systemd the gateway's state");
    }
}
