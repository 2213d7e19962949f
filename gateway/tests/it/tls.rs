//! HTTPS: a gateway bound with a TLS certificate (made with rcgen, signed by a test
//! CA) serves its routes to a client that trusts the CA, refuses plain HTTP and
//! clients that do not trust it, stops gracefully, and refuses certificate or key files
//! it cannot use with a clear `Error::Config`.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::sync::oneshot;
use weft_bus::testing::TestServer;
use weft_gateway::{Error, Gateway, GatewayConfig, TlsConfig};

use crate::common::json;

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost, PEM.
struct Certs {
    ca: String,
    cert: String,
    key: String,
}

fn certs() -> Certs {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gateway test CA");
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
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Certs {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tls_config(tls: TlsConfig) -> GatewayConfig {
    GatewayConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: Some(tls),
        ..GatewayConfig::default()
    }
}

/// A reqwest client that trusts only `ca_pem`.
fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_gateway_serves_https_with_its_certificate_and_refuses_plain_http() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let c = certs();
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsConfig::new(
        write(dir.path(), "gateway.pem", &c.cert),
        write(dir.path(), "gateway-key.pem", &c.key),
    );

    let gateway = Gateway::bind(bus.clone(), tls_config(tls)).await.unwrap();
    let addr = gateway.local_addr();
    let base = gateway.url();
    assert_eq!(base, format!("https://{addr}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(async {
        let _ = stopped.await;
    }));

    let https = client_trusting(&c.ca);
    let (status, body) = json(https.get(format!("{base}/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "status": "ok" }));
    let resp = https
        .post(format!("{base}/v1/events/ticket.created"))
        .header("content-type", "application/json")
        .body(r#"{"title": "printer on fire"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["stream"], "WEFT_EVENTS");

    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // A client that does not trust the test CA does not get through either.
    let stranger = client_trusting(&certs().ca)
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(stranger.is_err(), "an untrusted certificate was accepted");

    // Still serving after the failed handshakes; then a graceful stop.
    let (status, _) = json(https.get(format!("{base}/healthz")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let _ = stop.send(());
    task.await.unwrap().expect("serve returned an error");
}

#[tokio::test]
async fn unusable_certificate_or_key_files_are_config_errors_naming_the_file() {
    let server = TestServer::start().await;
    let bus = server.connect().await;
    let c = certs();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "gateway.pem", &c.cert);
    let key = write(dir.path(), "gateway-key.pem", &c.key);
    let other_key = write(
        dir.path(),
        "other-key.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let junk = write(dir.path(), "junk.pem", "not a certificate\n");

    let cases = [
        (
            TlsConfig::new(dir.path().join("missing.pem"), &key),
            "missing.pem",
        ),
        (
            TlsConfig::new(&cert, dir.path().join("missing-key.pem")),
            "missing-key.pem",
        ),
        (TlsConfig::new(&junk, &key), "junk.pem"),
        (TlsConfig::new(&cert, &junk), "junk.pem"),
        // The key belongs to another certificate.
        (TlsConfig::new(&cert, &other_key), "other-key.pem"),
    ];
    for (tls, named) in cases {
        let err = Gateway::bind(bus.clone(), tls_config(tls.clone()))
            .await
            .expect_err("the files are not usable");
        assert!(matches!(err, Error::Config(_)), "{tls:?}: {err}");
        assert!(err.to_string().contains(named), "{tls:?}: {err}");
    }
}
