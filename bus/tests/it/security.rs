//! Security against real nats-servers started with a configuration file written by
//! each test: TLS with server verification, mutual TLS, a `.creds` file in operator
//! mode, nkey and user/password authentication, publish permissions (a denied invoke
//! fails at once with `ErrorKind::Permission`), and a lost connection (waiting
//! requests fail at once with `ErrorKind::Disconnected`).
//!
//! Certificates are made with rcgen ([`Pki`]). The operator, account and user JWTs are
//! built here ([`jwt`]): no maintained Rust crate issues all three (nats-jwt 0.3 has no
//! operator claims and no JetStream limits), and the claims are small JSON objects
//! signed with the issuer's nkey, as nats-io/jwt v2 does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use weft_bus::service::{Endpoint, Request, Service, ServiceHandle};
use weft_bus::stream::{StreamOptions, StreamWriter};
use weft_bus::testing::{TestServer, test_resources};
use weft_bus::{Bus, ConnectOptions, Envelope, ErrorCode, ErrorKind, ErrorPayload, Target};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// Starts a nats-server whose configuration is `config`, after writing `files` into
/// its directory; `$DIR` in `config` stands for that directory.
async fn start(config: &str, files: &[(&str, &str)]) -> TestServer {
    let config = config.to_owned();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    TestServer::start_with(move |c, dir| {
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).expect("write a server file");
        }
        let path = dir.join("server.conf");
        let text = config.replace("$DIR", &dir.display().to_string());
        std::fs::write(&path, text).expect("write the server configuration");
        c.config_file = Some(path);
    })
    .await
}

/// Writes `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a client file");
    path
}

fn target(t: &str) -> Target {
    t.parse().expect("target")
}

/// Service `tickets` with endpoint `list`.
async fn tickets(bus: &Bus) -> ServiceHandle {
    Service::new("tickets", "1.0.0")
        .endpoint(Endpoint::new("list", |_req: Request| async move {
            Ok(json!({ "open": 3 }))
        }))
        .serve(bus)
        .await
        .expect("serve tickets")
}

/// Real work over `bus`: creates the mesh's resources, serves `tickets` and invokes it.
async fn round_trip(bus: &Bus) {
    weft_bus::resources::ensure(bus, &test_resources())
        .await
        .expect("create the mesh's resources");
    let svc = tickets(bus).await;
    let reply = bus
        .invoke(&target("tickets.list"), json!({}))
        .await
        .expect("invoke tickets.list");
    assert_eq!(reply, json!({ "open": 3 }));
    svc.stop().await.expect("stop tickets");
}

/// The error of a connection that must be refused; asserts it is a Connect error.
async fn refused(options: ConnectOptions) -> weft_bus::Error {
    let err = options
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect_err("the connection must be refused");
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    err
}

// ---------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------

/// A test CA and certificates it signs, as PEM text.
struct Pki {
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
}

/// A certificate and its private key, PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Pki {
            ca_pem: cert.pem(),
            ca_params: params,
            ca_key: key,
        }
    }

    fn issue(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign the leaf");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self) -> Issued {
        self.issue(
            &["127.0.0.1", "localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Issued {
        self.issue(&[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }
}

const TLS_CONFIG: &str = r#"
tls {
  cert_file: "$DIR/server.pem"
  key_file: "$DIR/server-key.pem"
  timeout: 5
}
"#;

const MTLS_CONFIG: &str = r#"
tls {
  cert_file: "$DIR/server.pem"
  key_file: "$DIR/server-key.pem"
  ca_file: "$DIR/ca.pem"
  verify: true
  timeout: 5
}
"#;

#[tokio::test]
async fn tls_verifies_the_server_against_the_configured_ca() {
    let pki = Pki::new("weft");
    let srv = pki.server();
    let server = start(
        TLS_CONFIG,
        &[("server.pem", &srv.cert), ("server-key.pem", &srv.key)],
    )
    .await;
    let client_dir = tempfile::tempdir().unwrap();
    let ca = write(client_dir.path(), "ca.pem", &pki.ca_pem);

    let bus = ConnectOptions::new(server.url())
        .tls_ca(&ca)
        .connect()
        .await
        .expect("connect trusting the test CA");
    assert!(
        bus.client().server_info().tls_required,
        "the server must require TLS, or this test proves nothing"
    );
    round_trip(&bus).await;

    // Verification stays on: another CA, or the system roots, do not vouch for it.
    let other = write(client_dir.path(), "other-ca.pem", &Pki::new("other").ca_pem);
    let err = refused(ConnectOptions::new(server.url()).tls_ca(&other)).await;
    let text = format!("{err}");
    assert!(text.contains(server.url()), "{text}");
    assert!(text.contains("certificate"), "{text}");
    refused(ConnectOptions::new(server.url())).await;

    // A CA file that does not exist is named.
    let missing = client_dir.path().join("missing-ca.pem");
    let err = refused(ConnectOptions::new(server.url()).tls_ca(&missing)).await;
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_signed_by_the_servers_ca() {
    let pki = Pki::new("weft");
    let srv = pki.server();
    let server = start(
        MTLS_CONFIG,
        &[
            ("server.pem", &srv.cert),
            ("server-key.pem", &srv.key),
            ("ca.pem", &pki.ca_pem),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let me = pki.client("weft-client");
    let cert = write(dir.path(), "client.pem", &me.cert);
    let key = write(dir.path(), "client-key.pem", &me.key);

    let bus = ConnectOptions::new(server.url())
        .tls_ca(&ca)
        .tls_client_cert(&cert, &key)
        .connect()
        .await
        .expect("connect with a client certificate");
    round_trip(&bus).await;

    // Without a client certificate, or with one from another CA: refused.
    refused(ConnectOptions::new(server.url()).tls_ca(&ca)).await;
    let stranger = Pki::new("other").client("stranger");
    let cert2 = write(dir.path(), "stranger.pem", &stranger.cert);
    let key2 = write(dir.path(), "stranger-key.pem", &stranger.key);
    refused(
        ConnectOptions::new(server.url())
            .tls_ca(&ca)
            .tls_client_cert(&cert2, &key2),
    )
    .await;

    // A missing key file is named.
    let missing = dir.path().join("no-such-key.pem");
    let err = refused(
        ConnectOptions::new(server.url())
            .tls_ca(&ca)
            .tls_client_cert(&cert, &missing),
    )
    .await;
    assert!(err.to_string().contains("no-such-key.pem"), "{err}");
}

// ---------------------------------------------------------------------------------
// JWTs and .creds files (operator mode)
// ---------------------------------------------------------------------------------

/// NATS JWTs (nats-io/jwt v2 claims), built by hand and signed with nkeys.
///
/// A JWT is `base64url(header) . base64url(claims) . base64url(signature)` (no padding),
/// the header `{"typ":"JWT","alg":"ed25519-nkey"}`, the signature the issuer's ed25519
/// signature over the first two parts. Claims: `jti` (a unique id), `iat` (seconds),
/// `iss` (the issuer's public nkey), `sub` (the subject's public nkey), `name`, and
/// `nats` (`type` operator/account/user, `version` 2, and the type's fields). Limits
/// left out would read as 0 (none allowed), so every limit is given as -1 (no limit).
mod jwt {
    use data_encoding::BASE64URL_NOPAD;
    use nkeys::KeyPair;
    use serde_json::{Value, json};

    fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
        let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = json!({
            "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
            "iat": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            "iss": issuer.public_key(),
            "sub": subject,
            "name": name,
            "nats": nats,
        });
        let payload = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
        let signed = format!("{header}.{payload}");
        let sig = issuer.sign(signed.as_bytes()).expect("sign the JWT");
        format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
    }

    /// A self-signed operator JWT naming `system_account`.
    pub fn operator(operator: &KeyPair, system_account: &str) -> String {
        let nats = json!({ "type": "operator", "version": 2, "system_account": system_account });
        encode(operator, &operator.public_key(), "test-operator", nats)
    }

    /// An account JWT signed by `operator`, without limits, JetStream enabled when
    /// `jetstream`.
    pub fn account(operator: &KeyPair, account: &KeyPair, name: &str, jetstream: bool) -> String {
        let mut limits = json!({
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        });
        if jetstream {
            let js =
                json!({ "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1 });
            for (k, v) in js.as_object().unwrap() {
                limits[k] = v.clone();
            }
        }
        let nats = json!({ "type": "account", "version": 2, "limits": limits });
        encode(operator, &account.public_key(), name, nats)
    }

    /// A user JWT signed by `account`, without limits or permissions.
    pub fn user(account: &KeyPair, user: &KeyPair, name: &str) -> String {
        let nats = json!({ "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1 });
        encode(account, &user.public_key(), name, nats)
    }

    /// The text of a `.creds` file: the user JWT and the user's seed.
    pub fn creds(user_jwt: &str, user: &KeyPair) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().expect("user seed")
        )
    }
}

#[tokio::test]
async fn a_creds_file_authenticates_in_operator_mode() {
    use nkeys::KeyPair;
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let app = KeyPair::new_account();
    let user = KeyPair::new_user();
    let operator_jwt = jwt::operator(&operator, &system.public_key());
    let config = format!(
        r#"
operator: "$DIR/operator.jwt"
system_account: {sys}
resolver: MEMORY
resolver_preload: {{
  {sys}: "{sys_jwt}"
  {app}: "{app_jwt}"
}}
"#,
        sys = system.public_key(),
        sys_jwt = jwt::account(&operator, &system, "SYS", false),
        app = app.public_key(),
        app_jwt = jwt::account(&operator, &app, "weft", true),
    );
    let server = start(&config, &[("operator.jwt", &operator_jwt)]).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = write(
        dir.path(),
        "weft.creds",
        &jwt::creds(&jwt::user(&app, &user, "weft"), &user),
    );

    let bus = ConnectOptions::new(server.url())
        .creds_file(&creds)
        .connect()
        .await
        .expect("connect with the creds file");
    round_trip(&bus).await;

    // No credentials at all: refused.
    refused(ConnectOptions::new(server.url())).await;

    // A creds file that does not exist: the error names it.
    let missing = dir.path().join("nobody.creds");
    let err = refused(ConnectOptions::new(server.url()).creds_file(&missing)).await;
    assert!(err.to_string().contains("nobody.creds"), "{err}");

    // A user of an account this server does not know: refused, naming the file.
    let stranger_account = KeyPair::new_account();
    let stranger = KeyPair::new_user();
    let wrong = write(
        dir.path(),
        "stranger.creds",
        &jwt::creds(&jwt::user(&stranger_account, &stranger, "x"), &stranger),
    );
    let err = refused(ConnectOptions::new(server.url()).creds_file(&wrong)).await;
    assert!(err.to_string().contains("stranger.creds"), "{err}");

    // Text that is not a creds file: named too.
    let garbage = write(dir.path(), "garbage.creds", "not a creds file\n");
    let err = refused(ConnectOptions::new(server.url()).creds_file(&garbage)).await;
    assert!(err.to_string().contains("garbage.creds"), "{err}");
}

// ---------------------------------------------------------------------------------
// nkeys and user/password
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_nkey_seed_authenticates_and_a_wrong_one_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    );
    let server = start(&config, &[]).await;
    let seed = user.seed().unwrap();

    let bus = ConnectOptions::new(server.url())
        .nkey_seed(&seed)
        .connect()
        .await
        .expect("connect with the nkey seed");
    round_trip(&bus).await;

    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let err = refused(ConnectOptions::new(server.url()).nkey_seed(&other)).await;
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&other), "the seed leaked: {text}");

    let err = refused(ConnectOptions::new(server.url()).nkey_seed("SUNOTASEED")).await;
    assert!(err.to_string().contains("nkey seed"), "{err}");
    assert!(!format!("{err} {err:?}").contains("SUNOTASEED"), "{err}");
}

#[tokio::test]
async fn user_and_password_authenticate_and_a_wrong_password_is_not_shown() {
    let config = r#"authorization { users = [ { user: weft, password: "right-pw-1937" } ] }"#;
    let server = start(config, &[]).await;

    let bus = ConnectOptions::new(server.url())
        .user_password("weft", "right-pw-1937")
        .connect()
        .await
        .expect("connect with user and password");
    round_trip(&bus).await;

    let err =
        refused(ConnectOptions::new(server.url()).user_password("weft", "wrong-pw-2718")).await;
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("wrong-pw-2718"),
        "the password leaked: {text}"
    );
    assert!(text.contains("user weft"), "{text}");

    // In the URL: redacted from the message.
    let url = server.url().replace("://", "://weft:url-pw-1414@");
    let err = refused(ConnectOptions::new(url)).await;
    let text = format!("{err} {err:?}");
    assert!(!text.contains("url-pw-1414"), "the password leaked: {text}");
}

// ---------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------

const PERMISSIONS_CONFIG: &str = r#"
authorization {
  users = [
    { user: admin, password: admin-pw }
    {
      user: caller, password: caller-pw,
      permissions: {
        publish: { allow: ["weft.invoke.tickets.>"] }
        subscribe: { allow: ["_INBOX.>"] }
      }
    }
  ]
}
"#;

#[tokio::test]
async fn an_invoke_the_users_permissions_deny_fails_at_once_with_permission() {
    let server = start(PERMISSIONS_CONFIG, &[]).await;
    let admin = ConnectOptions::new(server.url())
        .user_password("admin", "admin-pw")
        .connect()
        .await
        .expect("connect as admin");
    weft_bus::resources::ensure(&admin, &test_resources())
        .await
        .expect("create the mesh's resources");
    let _tickets = tickets(&admin).await;
    let _billing = Service::new("billing", "1.0.0")
        .endpoint(Endpoint::new("charge", |_req: Request| async move {
            Ok(json!("charged"))
        }))
        .endpoint(Endpoint::streaming(
            "statement",
            |_req: Request, out: StreamWriter| async move {
                out.delta(json!("line")).await?;
                Ok(json!("done"))
            },
        ))
        .serve(&admin)
        .await
        .expect("serve billing");

    let caller = ConnectOptions::new(server.url())
        .user_password("caller", "caller-pw")
        .connect()
        .await
        .expect("connect as caller");
    let reply = caller
        .invoke(&target("tickets.list"), json!({}))
        .await
        .expect("the caller may invoke tickets");
    assert_eq!(reply, json!({ "open": 3 }));

    // billing runs, but the caller may not publish to it: refused at once, not after
    // the 30 s timeout.
    let timeout = Duration::from_secs(30);
    let started = Instant::now();
    let err = caller
        .request(
            &target("billing.charge"),
            Envelope::request("billing.charge", json!({})),
            timeout,
        )
        .await
        .expect_err("billing is not allowed");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Permission, "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "not allowed to publish to weft.invoke.billing.charge: the NATS user's permissions deny it"
    );
    assert_eq!(ErrorPayload::from(&err).code, ErrorCode::AuthFailure);

    // A streaming invoke ends the same way.
    let mut frames = caller
        .invoke_stream(
            &target("billing.statement"),
            Envelope::request("billing.statement", json!({})),
            StreamOptions::default().idle_timeout(timeout),
        )
        .await
        .expect("the stream is sent");
    let first = frames.next().await.expect("an item");
    let err = first.expect_err("the stream is refused");
    assert_eq!(err.kind(), ErrorKind::Permission, "{err}");
    assert!(frames.next().await.is_none());

    // The connection stays usable for what is allowed; the admin reaches billing.
    let reply = caller
        .invoke(&target("tickets.list"), json!({}))
        .await
        .expect("tickets still work after a denial");
    assert_eq!(reply, json!({ "open": 3 }));
    let charged = admin
        .invoke(&target("billing.charge"), json!({}))
        .await
        .expect("the admin may invoke billing");
    assert_eq!(charged, json!("charged"));
}

// ---------------------------------------------------------------------------------
// A lost connection
// ---------------------------------------------------------------------------------

/// Service `slow`: endpoint `wait` (plain) and `drip` (streaming) tell `started` they
/// run, then take a minute.
async fn slow_service(bus: &Bus, started: Arc<Notify>) -> ServiceHandle {
    let plain = started.clone();
    Service::new("slow", "1.0.0")
        .endpoint(Endpoint::new("wait", move |_req: Request| {
            let started = plain.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(Value::Null)
            }
        }))
        .endpoint(Endpoint::streaming(
            "drip",
            move |_req: Request, out: StreamWriter| {
                let started = started.clone();
                async move {
                    out.delta(json!("first")).await?;
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(Value::Null)
                }
            },
        ))
        .serve(bus)
        .await
        .expect("serve slow")
}

#[tokio::test]
async fn a_waiting_request_fails_with_disconnected_when_the_server_goes_away() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let started = Arc::new(Notify::new());
    let _svc = slow_service(&bus, started.clone()).await;
    let caller = server.connect().await;

    let timeout = Duration::from_secs(30);
    let request = tokio::spawn({
        let caller = caller.clone();
        async move {
            let t0 = Instant::now();
            let r = caller
                .request(
                    &target("slow.wait"),
                    Envelope::request("slow.wait", json!({})),
                    timeout,
                )
                .await;
            (r, t0.elapsed())
        }
    });
    started.notified().await;
    let url = server.url().to_owned();
    drop(server); // kills nats-server

    let (result, took) = request.await.unwrap();
    let err = result.expect_err("the connection is gone");
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&url) && text.contains("slow.wait"), "{text}");
    assert!(text.contains("may or may not have been handled"), "{text}");
    let payload = ErrorPayload::from(&err);
    assert_eq!(payload.code, ErrorCode::TransportFailure);
    assert!(payload.retryable);
}

#[tokio::test]
async fn a_stream_ends_with_disconnected_when_the_server_goes_away() {
    let server = TestServer::start().await;
    let bus = server.bus().await;
    let started = Arc::new(Notify::new());
    let _svc = slow_service(&bus, started.clone()).await;
    let caller = server.connect().await;

    let timeout = Duration::from_secs(30);
    let mut frames = caller
        .invoke_stream(
            &target("slow.drip"),
            Envelope::request("slow.drip", json!({})),
            StreamOptions::default()
                .idle_timeout(timeout)
                .timeout(timeout),
        )
        .await
        .expect("start the stream");
    // started, then the delta; the handler has told us it runs by then.
    loop {
        let frame = frames.next().await.expect("a frame").expect("a good frame");
        if frame.event_type() == "agent.response.delta" {
            break;
        }
    }
    started.notified().await;
    drop(server);

    let t0 = Instant::now();
    let err = frames
        .next()
        .await
        .expect("an item")
        .expect_err("the connection is gone");
    let took = t0.elapsed();
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(frames.next().await.is_none());
}
