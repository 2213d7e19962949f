//! [`GatewayConfig`]: where the gateway listens, how long it waits, how much it reads,
//! and who may call it (DESIGN §8, §11).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// Default listen address: `127.0.0.1:8080` (loopback only, DESIGN §8).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8080);

/// Default longest wait for an invoke reply: 30 s (the bus's
/// [`DEFAULT_INVOKE_TIMEOUT`](weft_bus::invoke::DEFAULT_INVOKE_TIMEOUT)).
pub const DEFAULT_INVOKE_TIMEOUT: Duration = weft_bus::invoke::DEFAULT_INVOKE_TIMEOUT;

/// Default largest request body: 1 MiB (1 048 576 bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Settings of one gateway. Every field states its default; build one with
/// `GatewayConfig { .., ..Default::default() }`.
///
/// Security (DESIGN §8): the gateway binds loopback by default. Bound to any other
/// address it requires [`auth_token`](GatewayConfig::auth_token) unless
/// [`allow_insecure`](GatewayConfig::allow_insecure) says that unauthenticated access is
/// intended; [`GatewayConfig::validate`] enforces this before anything is bound.
///
/// With [`tls`](GatewayConfig::tls) set the gateway serves HTTPS (rustls) instead of
/// HTTP.
///
/// `Debug` prints the token as `***`.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use weft_gateway::GatewayConfig;
///
/// let config = GatewayConfig {
///     addr: "0.0.0.0:8080".parse().unwrap(),
///     auth_token: Some("s3cret".into()),
///     invoke_timeout: Duration::from_secs(10),
///     ..Default::default()
/// };
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Address to listen on. Port 0 picks a free port (read it back with
    /// [`Gateway::local_addr`](crate::Gateway::local_addr)). Default [`DEFAULT_ADDR`],
    /// `127.0.0.1:8080`.
    pub addr: SocketAddr,
    /// Longest wait for the reply of `POST /v1/invoke/{target}`; a request may shorten
    /// it with `?timeout_ms=`, never lengthen it. Default 30 s.
    pub invoke_timeout: Duration,
    /// Largest request body in bytes; larger bodies get 413. The envelope limit of the
    /// bus (1 MiB, [`MAX_ENVELOPE_BYTES`](weft_bus::envelope::MAX_ENVELOPE_BYTES),
    /// payload plus envelope fields) applies on top. Default 1 MiB.
    pub max_body_bytes: usize,
    /// When set, every route except `/healthz` requires
    /// `Authorization: Bearer <token>`; others get 401 `AUTH_FAILURE`. Default none.
    pub auth_token: Option<String>,
    /// Allows binding a non-loopback address without an auth token. Default false.
    pub allow_insecure: bool,
    /// Serve HTTPS with this certificate and key instead of HTTP. Default none (HTTP).
    /// TLS does not authenticate clients: a non-loopback address still needs
    /// [`auth_token`](GatewayConfig::auth_token) (or `allow_insecure`).
    pub tls: Option<TlsConfig>,
    /// Only these services and agents are tools on `/mcp` (`--mcp-services a,b`).
    /// Default none: every registered service and agent ([`crate::mcp::server`]).
    pub mcp_services: Option<std::collections::BTreeSet<String>>,
    /// The agent whose card `/.well-known/agent-card.json` serves (`--a2a-default`).
    /// Default none: the only registered agent, if there is exactly one.
    pub a2a_default: Option<String>,
}

/// The gateway's TLS certificate and key: paths of PEM files, read when the gateway
/// is bound ([`Gateway::bind`](crate::Gateway::bind)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain: PEM `CERTIFICATE` blocks, the gateway's own certificate
    /// first, then any intermediates.
    pub cert_chain: PathBuf,
    /// The private key of the first certificate: PEM, PKCS#8 (`PRIVATE KEY`), PKCS#1
    /// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub private_key: PathBuf,
}

impl TlsConfig {
    /// The certificate chain `cert_chain` and its key `private_key` (PEM files).
    pub fn new(cert_chain: impl Into<PathBuf>, private_key: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert_chain: cert_chain.into(),
            private_key: private_key.into(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            addr: DEFAULT_ADDR,
            invoke_timeout: DEFAULT_INVOKE_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            auth_token: None,
            allow_insecure: false,
            tls: None,
            mcp_services: None,
            a2a_default: None,
        }
    }
}

impl fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("addr", &self.addr)
            .field("invoke_timeout", &self.invoke_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "***"))
            .field("allow_insecure", &self.allow_insecure)
            .field("tls", &self.tls)
            .field("mcp_services", &self.mcp_services)
            .field("a2a_default", &self.a2a_default)
            .finish()
    }
}

impl GatewayConfig {
    /// Checks the settings without binding anything.
    ///
    /// # Errors
    /// - [`Error::Insecure`]: `addr` is not a loopback address, no `auth_token` is set
    ///   and `allow_insecure` is false (DESIGN §8);
    /// - [`Error::Config`]: an empty `auth_token`, a zero `max_body_bytes` or a zero
    ///   `invoke_timeout`.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(token) = &self.auth_token
            && token.trim().is_empty()
        {
            return Err(Error::Config(
                "the auth token is empty; set a non-empty token or none".into(),
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::Config(
                "max_body_bytes is 0; every request body would be refused".into(),
            ));
        }
        if self.invoke_timeout.is_zero() {
            return Err(Error::Config(
                "invoke_timeout is 0; every invoke would time out".into(),
            ));
        }
        if !self.addr.ip().is_loopback() && self.auth_token.is_none() && !self.allow_insecure {
            return Err(Error::Insecure { addr: self.addr });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(addr: &str) -> GatewayConfig {
        GatewayConfig {
            addr: addr.parse().unwrap(),
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn defaults_are_loopback_30s_1mib_no_auth() {
        let c = GatewayConfig::default();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.invoke_timeout, Duration::from_secs(30));
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert!(c.auth_token.is_none() && !c.allow_insecure);
        c.validate().unwrap();
    }

    #[test]
    fn loopback_needs_no_token() {
        at("127.0.0.1:0").validate().unwrap();
        at("[::1]:0").validate().unwrap();
    }

    #[test]
    fn public_addresses_need_a_token_or_the_insecure_flag() {
        for addr in ["0.0.0.0:8080", "[::]:8080", "192.168.1.10:80"] {
            let err = at(addr).validate().unwrap_err();
            assert!(matches!(err, Error::Insecure { .. }), "{addr}: {err}");
            let text = err.to_string();
            assert!(text.contains(addr), "{text}");
            assert!(
                text.contains("auth token") && text.contains("insecure"),
                "{text}"
            );

            let with_token = GatewayConfig {
                auth_token: Some("t".into()),
                ..at(addr)
            };
            with_token.validate().unwrap();
            let insecure = GatewayConfig {
                allow_insecure: true,
                ..at(addr)
            };
            insecure.validate().unwrap();
        }
    }

    #[test]
    fn nonsense_settings_are_refused() {
        let empty = GatewayConfig {
            auth_token: Some(" ".into()),
            ..GatewayConfig::default()
        };
        assert!(matches!(empty.validate(), Err(Error::Config(_))));
        let no_body = GatewayConfig {
            max_body_bytes: 0,
            ..GatewayConfig::default()
        };
        assert!(matches!(no_body.validate(), Err(Error::Config(_))));
        let no_time = GatewayConfig {
            invoke_timeout: Duration::ZERO,
            ..GatewayConfig::default()
        };
        assert!(matches!(no_time.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn debug_hides_the_token() {
        let c = GatewayConfig {
            auth_token: Some("s3cret".into()),
            ..GatewayConfig::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("s3cret") && text.contains("***"), "{text}");
    }
}
