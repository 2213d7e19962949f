//! Security through the `weft` binary: the CLI takes TLS and credentials from the
//! environment (`NATS_CA`, `NATS_USER`/`NATS_PASSWORD`), explains refusals with a hint
//! (wrong password, unknown CA, a publish the user's permissions deny, which fails at
//! once), and `weft up --tls-cert --tls-key` serves the gateway over HTTPS.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use weft_bus::ConnectOptions;
use weft_bus::resources::{self, ResourceConfig};
use weft_bus::service::{Endpoint, Request, Service};
use weft_bus::testing::TestServer;

use crate::Up;

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, written
/// to `dir` as `ca.pem`, `server.pem` and `server-key.pem`.
fn write_certs(dir: &Path) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &rcgen::Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

const SERVER_CONFIG: &str = r#"
tls {
  cert_file: "$DIR/server.pem"
  key_file: "$DIR/server-key.pem"
}
authorization {
  users = [
    { user: admin, password: admin-pw-5151 }
    {
      user: caller, password: caller-pw-6161,
      permissions: {
        publish: { allow: ["weft.invoke.tickets.>"] }
        subscribe: { allow: ["_INBOX.>"] }
      }
    }
  ]
}
"#;

/// Runs `weft args…` with only the NATS variables in `env`; returns (success, stdout,
/// stderr).
async fn weft(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args);
    for var in [
        "NATS_URL",
        "NATS_CREDS",
        "NATS_TOKEN",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_NKEY",
        "NATS_CA",
        "NATS_CERT",
        "NATS_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().await.expect("run weft");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_takes_tls_and_credentials_from_the_environment_and_explains_refusals() {
    let server = TestServer::start_with(|c, dir| {
        write_certs(dir);
        let path = dir.join("server.conf");
        std::fs::write(
            &path,
            SERVER_CONFIG.replace("$DIR", &dir.display().to_string()),
        )
        .unwrap();
        c.config_file = Some(path);
    })
    .await;
    let ca = server.dir().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let url = server.url();

    let admin = ConnectOptions::new(url)
        .tls_ca(ca)
        .user_password("admin", "admin-pw-5151")
        .connect()
        .await
        .expect("connect as admin");
    resources::ensure(&admin, &ResourceConfig::default())
        .await
        .unwrap();
    let _billing = Service::new("billing", "1.0.0")
        .endpoint(Endpoint::new("charge", |_req: Request| async move {
            Ok(json!("charged"))
        }))
        .serve(&admin)
        .await
        .unwrap();

    // The environment carries the URL, the CA and the user.
    let as_admin = [
        ("NATS_URL", url),
        ("NATS_CA", ca),
        ("NATS_USER", "admin"),
        ("NATS_PASSWORD", "admin-pw-5151"),
    ];
    let (ok, out, err) = weft(&["pub", "ticket.created", r#"{"title":"x"}"#], &as_admin).await;
    assert!(ok, "weft pub failed: {err}");
    assert!(!out.is_empty());
    let (ok, out, err) = weft(&["call", "billing.charge"], &as_admin).await;
    assert!(ok, "weft call as admin failed: {err}");
    assert!(out.contains("charged"), "{out}");

    // The caller may not publish to billing: refused at once, with a hint.
    let as_caller = [
        ("NATS_URL", url),
        ("NATS_CA", ca),
        ("NATS_USER", "caller"),
        ("NATS_PASSWORD", "caller-pw-6161"),
    ];
    let started = Instant::now();
    let (ok, _, err) = weft(&["call", "billing.charge"], &as_caller).await;
    let took = started.elapsed();
    assert!(!ok);
    assert!(
        err.contains(
            "not allowed to publish to weft.invoke.billing.charge: the NATS user's permissions deny it"
        ),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("permissions"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(20),
        "took {took:?} (the call timeout is 30 s)"
    );

    // A wrong password: refused, not shown, with a hint about credentials.
    let wrong = [
        ("NATS_URL", url),
        ("NATS_CA", ca),
        ("NATS_USER", "caller"),
        ("NATS_PASSWORD", "wrong-pw-7171"),
    ];
    let (ok, _, err) = weft(&["ls"], &wrong).await;
    assert!(!ok);
    assert!(err.contains("authorization violation"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("credentials"),
        "{err}"
    );
    assert!(!err.contains("wrong-pw-7171"), "the password leaked: {err}");

    // Without the CA the server's certificate is not trusted.
    let no_ca = [
        ("NATS_URL", url),
        ("NATS_USER", "admin"),
        ("NATS_PASSWORD", "admin-pw-5151"),
    ];
    let (ok, _, err) = weft(&["ls"], &no_ca).await;
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("hint:") && err.contains("NATS_CA"), "{err}");
}

#[tokio::test]
async fn weft_up_serves_the_gateway_over_https_with_tls_cert_and_key() {
    let certs = tempfile::tempdir().unwrap();
    write_certs(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server-key.pem");
    let mut up = Up::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let http = up.http.clone();

    let banner = up.proc.banner();
    assert!(banner.contains(&format!("https://{http}")), "{banner}");
    assert!(!banner.contains(&format!("http://{http}")), "{banner}");

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let resp = client
        .get(format!("https://{http}/healthz"))
        .send()
        .await
        .expect("GET /healthz over HTTPS");
    assert_eq!(resp.status().as_u16(), 200);

    let status = up
        .proc
        .interrupt(Duration::from_secs(30))
        .expect("weft up stops");
    assert!(
        status.success(),
        "weft up exited {status}; stderr:\n{}",
        up.log()
    );
}
