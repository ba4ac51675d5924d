//! TLS and SASL against a real broker: Nisshi serving TLS with a certificate signed by a
//! CA made here, and requiring SCRAM-SHA-512 logins over TLS. Each test starts its own
//! Nisshi on a free loopback port (never `$ORDERFLOW_TEST_BROKERS`: these need a broker
//! set up just so), and the broker is killed when the test ends, also on panic.
//!
//! Every test goes through orderflow's own code twice: the library (`KafkaConfig`'s
//! check, topic creation, `Publisher`, `TopicReader`) and the `orderflow` binary with
//! the new flags and environment variables.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{nisshi_binary, Broker, Orderflow};
use orderflow_producer::Publisher;
use orderflow_runtime::kafka::{KafkaConfig, SaslMechanism, Secret, Security, SecurityProtocol, TopicReader};
use orderflow_runtime::topics::{self, Stage, Topics};
use rdkafka::Message as _;

const MERCHANTS: &str = "merchant_id,region,tier\nm1,east,gold\nm2,west,silver\n";
/// The SCRAM user's password; commas and `=` show that it reaches the broker whole.
const PASSWORD: &str = "pa,ss=w,rd";
/// How long the refusal tests let orderflow wait for the brokers: a refusal must come
/// well within it, not at its end.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA, a broker certificate it signed (for `localhost` and 127.0.0.1), one it signed
/// for another host name, a client certificate it signed, and another CA that signed
/// nothing here, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    elsewhere_cert: PathBuf,
    elsewhere_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params("orderflow test CA").self_signed(&ca_key).unwrap();
    let other_ca = ca_params("orderflow test CA").self_signed(&KeyPair::generate().unwrap()).unwrap();
    let signed = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        (p.signed_by(&key, &ca, &ca_key).unwrap(), key)
    };
    let (broker, broker_key) = signed(&["localhost", "127.0.0.1"]);
    let (elsewhere, elsewhere_key) = signed(&["kafka.elsewhere.invalid"]);
    let (client, client_key) = signed(&["orderflow-client"]);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        other_ca: write("other-ca.pem", other_ca.pem()),
        cert: write("broker.pem", broker.pem()),
        key: write("broker.key", broker_key.serialize_pem()),
        elsewhere_cert: write("elsewhere.pem", elsewhere.pem()),
        elsewhere_key: write("elsewhere.key", elsewhere_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        dir,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Nisshi serving TLS only, with in-memory storage.
fn tls_broker(pki: &Pki) -> Broker {
    Broker::nisshi_with(pki.dir.path(), "memory://nisshi/", &["--cert", s(&pki.cert), "--key", s(&pki.key)])
}

/// Nisshi serving TLS only and requiring a SASL login, knowing SCRAM users given as
/// (name, password, `scram512` or `scram256`). Users live in the storage engine (SQLite
/// here: Nisshi's in-memory engine cannot keep them), and `nisshi user create` speaks
/// plaintext without logging in, so they are created through a plaintext broker
/// without authentication on the same database, which is then stopped.
fn scram_broker(pki: &Pki, users: &[(&str, &str, &str)]) -> Broker {
    let storage = "sqlite://broker.db";
    {
        let setup = Broker::nisshi_in(pki.dir.path(), storage);
        for (user, password, mechanism) in users {
            let out = common::output_within(
                Command::new(nisshi_binary()).args([
                    "user",
                    "create",
                    "--mechanism",
                    mechanism,
                    "--broker",
                    &format!("tcp://{}", setup.bootstrap),
                    user,
                    password,
                ]),
                common::RUN_LIMIT,
            );
            assert!(out.status.success(), "nisshi user create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Broker::nisshi_with(pki.dir.path(), storage, &["--authentication", "--cert", s(&pki.cert), "--key", s(&pki.key)])
}

fn tls_config(broker: &Broker, ca: &Path) -> KafkaConfig {
    let mut kafka = KafkaConfig::new(&broker.bootstrap);
    kafka.connect_timeout = CONNECT_TIMEOUT;
    kafka.security = Security { protocol: SecurityProtocol::Ssl, ca_file: Some(ca.to_owned()), ..Security::default() };
    kafka
}

fn scram_config(broker: &Broker, pki: &Pki, user: &str, password: Secret) -> KafkaConfig {
    let mut kafka = tls_config(broker, &pki.ca);
    kafka.security.protocol = SecurityProtocol::SaslSsl;
    kafka.security.sasl_mechanism = SaslMechanism::ScramSha512;
    kafka.security.sasl_username = Some(user.to_owned());
    kafka.security.sasl_password = Some(password);
    kafka
}

/// Through the library: creates the orders topic, publishes a record and reads it back.
fn round_trip(kafka: &KafkaConfig, prefix: &str) {
    kafka.check_reachable().expect("the brokers reachable");
    let topics = Topics::new(prefix, 2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        topics::ensure(kafka, &topics.specs(Stage::Publisher)).await.expect("creating the orders topic");
        let publisher = Publisher::new(kafka, topics.orders()).unwrap();
        publisher.publish_raw(Some("order-1"), b"over TLS").await.expect("publishing");
    });
    let reader = TopicReader::open(kafka, &topics.orders()).expect("opening the orders topic");
    let mut got = Vec::new();
    reader.read_to_end(|m| got.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)))).expect("reading");
    assert_eq!(got, [(Some(b"order-1".to_vec()), Some(b"over TLS".to_vec()))]);
}

/// The merchants topic's record count, read through the library.
fn merchant_records(kafka: &KafkaConfig, of: &Orderflow) -> u64 {
    let reader = TopicReader::open(kafka, &Topics::new(&of.prefix, of.partitions).merchants()).expect("opening the merchants topic");
    reader.read_to_end(|_| ()).expect("reading the merchants topic")
}

/// Runs `orderflow ARGS` and returns its output and how long it took.
fn run(mut command: Command, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = common::output_within(command.args(args), common::RUN_LIMIT);
    (out, started.elapsed())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn merchants_file(pki: &Pki) -> PathBuf {
    let path = pki.dir.path().join("merchants.csv");
    std::fs::write(&path, MERCHANTS).unwrap();
    path
}

#[test]
fn tls_with_the_right_ca_works_end_to_end() {
    let pki = pki();
    let broker = tls_broker(&pki);
    let of = Orderflow::new(&broker, 2);
    round_trip(&tls_config(&broker, &pki.ca), &of.prefix);

    // A client certificate is accepted by librdkafka (Nisshi asks for none, so this
    // shows only that the files are loaded, not that a broker checks them).
    let mut with_client_cert = tls_config(&broker, &pki.ca);
    with_client_cert.security.cert_file = Some(pki.client_cert.clone());
    with_client_cert.security.key_file = Some(pki.client_key.clone());
    with_client_cert.check_reachable().expect("TLS with a client certificate");

    // The binary, with the flags.
    let csv = merchants_file(&pki);
    let (out, _) = run(of.command(), &["merchants", "load", s(&csv), "--security-protocol", "ssl", "--ssl-ca-file", s(&pki.ca)]);
    assert!(out.status.success(), "merchants load over TLS failed: {}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("Published 2 merchant records to {}.merchants.", of.prefix));

    // The binary, with TLS set through ORDERFLOW_KAFKA_OPTIONS, one option a line.
    let mut command = of.command();
    command.env("ORDERFLOW_KAFKA_OPTIONS", format!("security.protocol=ssl\nssl.ca.location={}\n", s(&pki.ca)));
    let (out, _) = run(command, &["merchants", "load", s(&csv)]);
    assert!(out.status.success(), "merchants load with ORDERFLOW_KAFKA_OPTIONS failed: {}", stderr(&out));

    assert_eq!(merchant_records(&tls_config(&broker, &pki.ca), &of), 4);
}

#[test]
fn an_untrusted_broker_certificate_is_refused_as_a_tls_error() {
    let pki = pki();
    let broker = tls_broker(&pki);

    // Through the library: a CA that did not sign the broker's certificate.
    let started = Instant::now();
    let e = tls_config(&broker, &pki.other_ca).check_reachable().expect_err("an untrusted certificate accepted");
    assert!(matches!(e, orderflow_runtime::Error::Tls { .. }), "{e}");
    assert!(e.to_string().contains("certificate verify failed"), "{e}");
    assert!(started.elapsed() < CONNECT_TIMEOUT / 2, "refused only after {:?}", started.elapsed());

    // The right CA, but a certificate for another host name.
    let elsewhere =
        Broker::nisshi_with(pki.dir.path(), "memory://nisshi/", &["--cert", s(&pki.elsewhere_cert), "--key", s(&pki.elsewhere_key)]);
    let e = tls_config(&elsewhere, &pki.ca).check_reachable().expect_err("a certificate for another host accepted");
    assert!(matches!(e, orderflow_runtime::Error::Tls { .. }), "{e}");
    assert!(e.to_string().contains("certificate verify failed"), "{e}");
    drop(elsewhere);

    // Through the binary: the wrong CA, then no CA at all (the system's store, which
    // does not hold this test's CA either).
    let of = Orderflow::new(&broker, 2);
    let csv = merchants_file(&pki);
    let timeout = format!("{}s", CONNECT_TIMEOUT.as_secs());
    for ca in [&["--ssl-ca-file", s(&pki.other_ca)][..], &[]] {
        let mut args = vec!["merchants", "load", s(&csv), "--security-protocol", "ssl", "--connect-timeout", &timeout];
        args.extend_from_slice(ca);
        let (out, took) = run(of.command(), &args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded against an untrusted certificate");
        assert!(err.contains("error: TLS with the Kafka brokers at") && err.contains("certificate verify failed"), "{args:?}: {err}");
        assert!(took < CONNECT_TIMEOUT / 2, "{args:?} refused only after {took:?}");
    }
}

#[test]
fn scram_sha_512_over_tls_with_the_right_password_works() {
    let pki = pki();
    let broker = scram_broker(&pki, &[("alice", PASSWORD, "scram512"), ("bob", "b,ob", "scram256")]);

    // The broker does serve only clients that log in.
    let mut no_login = tls_config(&broker, &pki.ca);
    no_login.connect_timeout = Duration::from_secs(3);
    let e = no_login.check_reachable().expect_err("a client that did not log in was served");
    assert!(matches!(e, orderflow_runtime::Error::Unreachable { .. }), "{e}");

    let password_file = pki.dir.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let kafka = scram_config(&broker, &pki, "alice", Secret::File(password_file.clone()));
    let of = Orderflow::new(&broker, 2);
    round_trip(&kafka, &of.prefix);

    // SCRAM-SHA-256 too, for a user the broker keeps a SHA-256 credential for.
    let mut bob = scram_config(&broker, &pki, "bob", Secret::Value("b,ob".into()));
    bob.security.sasl_mechanism = SaslMechanism::ScramSha256;
    round_trip(&bob, &format!("{}-bob", of.prefix));

    // The binary: the password from ORDERFLOW_SASL_PASSWORD, then from a file.
    let csv = merchants_file(&pki);
    let flags = ["--security-protocol", "sasl_ssl", "--ssl-ca-file", s(&pki.ca), "--sasl-mechanism", "SCRAM-SHA-512"];
    let mut command = of.command();
    command.env("ORDERFLOW_SASL_USERNAME", "alice").env("ORDERFLOW_SASL_PASSWORD", PASSWORD);
    let (out, _) = run(command, &[&["merchants", "load", s(&csv)][..], &flags].concat());
    assert!(out.status.success(), "merchants load with ORDERFLOW_SASL_PASSWORD failed: {}", stderr(&out));
    let file_flags = ["--sasl-username", "alice", "--sasl-password-file", s(&password_file)];
    let (out, _) = run(of.command(), &[&["merchants", "load", s(&csv)][..], &flags, &file_flags].concat());
    assert!(out.status.success(), "merchants load with --sasl-password-file failed: {}", stderr(&out));

    assert_eq!(merchant_records(&kafka, &of), 4);
}

#[test]
fn a_wrong_password_is_refused_without_showing_it() {
    let pki = pki();
    let broker = scram_broker(&pki, &[("alice", PASSWORD, "scram512")]);
    let wrong = "wr,ong-pass=word";

    // Through the library.
    let started = Instant::now();
    let e = scram_config(&broker, &pki, "alice", Secret::Value(wrong.into())).check_reachable().expect_err("a wrong password accepted");
    assert!(matches!(e, orderflow_runtime::Error::Authentication { .. }), "{e}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(wrong) && !shown.contains(PASSWORD), "{shown}");
    assert!(started.elapsed() < CONNECT_TIMEOUT / 2, "refused only after {:?}", started.elapsed());

    // Through the binary, with every log line librdkafka and orderflow have to say.
    let of = Orderflow::new(&broker, 2);
    let csv = merchants_file(&pki);
    let timeout = format!("{}s", CONNECT_TIMEOUT.as_secs());
    let mut command = of.command();
    command.env("ORDERFLOW_SASL_PASSWORD", wrong).env("RUST_LOG", "debug");
    let args = [
        &["merchants", "load", s(&csv), "--connect-timeout", &timeout, "--kafka-option", "debug=security,broker,protocol"][..],
        &["--security-protocol", "sasl_ssl", "--ssl-ca-file", s(&pki.ca), "--sasl-username", "alice"],
    ]
    .concat();
    let (out, took) = run(command, &args);
    let err = stderr(&out);
    assert!(!out.status.success(), "a wrong password accepted");
    assert!(err.contains("error: the Kafka brokers at") && err.contains("refused the SASL login of user `alice`"), "{err}");
    // The debug log ran through the whole exchange (the error line alone also says
    // "SCRAM"): librdkafka logs each state of its SCRAM client, up to the message that
    // carries the proof derived from the password.
    for state in ["client-first-message", "client-final-message"] {
        let lines = err.lines().filter(|l| l.contains(&format!("SASL SCRAM client in state {state}"))).count();
        assert!(lines > 0, "no debug line of the SCRAM client in state {state}: {err}");
    }
    assert!(!err.contains(wrong) && !err.contains(PASSWORD), "a password shown: {err}");
    assert!(took < CONNECT_TIMEOUT / 2, "refused only after {took:?}");
}
