//! libp2p's TLS handshake (`/tls/1.0.0`, the libp2p TLS specification)
//! with a cipher the CPU accelerates.
//!
//! Kiln's TCP connections offer TLS first and noise second; a peer that
//! speaks only noise (js-libp2p, say) gets noise. The handshake is the
//! specification's, so any libp2p TLS peer interoperates:
//! - each side presents one self-signed certificate whose libp2p extension
//!   carries the node's identity key and its signature of the certificate's
//!   key ([`libp2p::tls::certificate`] makes and checks both);
//! - client authentication is mandatory, TLS 1.3 only, no server name.
//!
//! What differs from `libp2p::tls::Config` is the order of cipher suites.
//! Its list puts ChaCha20-Poly1305 first, and the dialling side's order
//! decides (the server takes the first suite the client offers that it
//! supports). On a CPU with AES and carry-less multiply instructions
//! (x86-64's AES-NI and PCLMULQDQ, aarch64's AES and PMULL), AES-128-GCM
//! costs a fraction of ChaCha20-Poly1305's cycles per byte, and a bulk
//! fetch spends its CPU on the cipher on both sides (BENCHMARKS.md, "Fetch").
//! Without those instructions ChaCha20-Poly1305 stays first.
//!
//! The random generator: aws-lc is built without its CPU-jitter entropy
//! source (`AWS_LC_SYS_NO_JITTER_ENTROPY` in `.cargo/config.toml`). Its
//! generator is then seeded from the operating system (`getrandom`), as
//! ring's and noise's are; the jitter source cost 40-60 ms of CPU at the
//! first handshake of every process.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::tls::certificate;
use libp2p::PeerId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedCipherSuite};

/// The protocol name multistream-select negotiates.
const PROTOCOL: &str = "/tls/1.0.0";

/// The ALPN the libp2p TLS specification requires.
const ALPN: &[u8] = b"libp2p";

/// Why a TLS upgrade failed, in words.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not make this node's TLS certificate: {0}")]
    Certificate(String),
    #[error("could not set up TLS: {0}")]
    Config(String),
    #[error("the TLS handshake with the peer failed: {0}")]
    Handshake(std::io::Error),
    #[error("the peer's TLS certificate is not a valid libp2p certificate")]
    BadCertificate,
}

/// The security upgrade: one per swarm, cloned per connection.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl TlsConfig {
    /// A certificate for `identity` and the client and server settings.
    pub fn new(identity: &Keypair) -> Result<Self, TlsError> {
        let provider = Arc::new(provider());
        let verifier = Arc::new(Libp2pVerifier);

        // One certificate for both directions, handed to rustls as is:
        // rustls's own checks of a configured certificate (webpki's) refuse
        // the libp2p extension, which is marked critical.
        let (cert, key) = certificate::generate(identity).map_err(|e| TlsError::Certificate(e.to_string()))?;
        let key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let certified = Arc::new(SingleCertAndKey::from(CertifiedKey::new(vec![cert], key)));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(certified.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(certified);
        server.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// aws-lc's provider with the cipher suites in the order this CPU runs
/// fastest.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = cipher_suites(aes_accelerated()).to_vec();
    provider
}

fn cipher_suites(aes_accelerated: bool) -> [SupportedCipherSuite; 3] {
    if aes_accelerated {
        [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        [
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

/// Whether the CPU has instructions for AES and for GCM's multiply.
fn aes_accelerated() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl UpgradeInfo for TlsConfig {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for TlsConfig
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, libp2p::tls::TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for TlsConfig
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, libp2p::tls::TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The specification: no server name indication. An unspecified
            // IP address as the name makes rustls send none.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

/// The peer's identity, from the one certificate the handshake verified.
fn peer_of(state: &rustls::CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|_| TlsError::BadCertificate),
        _ => Err(TlsError::BadCertificate),
    }
}

/// Checks what the specification asks of a peer's certificate, on both
/// sides: exactly one certificate, self-signed, with a valid libp2p
/// extension; and the handshake signed by its key. Which peer was meant is
/// checked by the swarm against the dialled address's `/p2p/` part.
#[derive(Debug)]
struct Libp2pVerifier;

impl Libp2pVerifier {
    fn check(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a libp2p peer presents exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity)
            .map(|_| ())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let cert =
            certificate::parse(cert).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        cert.verify_signature(dss.scheme, message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    /// The schemes `P2pCertificate::verify_signature` checks, elliptic
    /// curves first (the specification: RSA only when nothing else is).
    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

impl ServerCertVerifier for Libp2pVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured; a TLS 1.2 signature is refused.
        Err(rustls::Error::General("only TLS 1.3 is supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for Libp2pVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("only TLS 1.3 is supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_comes_first_only_where_the_cpu_accelerates_it() {
        assert_eq!(cipher_suites(true)[0].suite(), TLS13_AES_128_GCM_SHA256.suite());
        assert_eq!(cipher_suites(false)[0].suite(), TLS13_CHACHA20_POLY1305_SHA256.suite());
    }

    /// A TLS connection between two nodes over libp2p's in-memory
    /// transport: each learns the other's identity from the handshake, the
    /// cipher is the one this CPU runs fastest, and bytes cross both ways.
    #[test]
    fn two_nodes_handshake_and_talk() {
        use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
        use libp2p::core::transport::{DialOpts, ListenerId, MemoryTransport, PortUse, Transport, TransportEvent};
        use libp2p::core::Endpoint;

        futures::executor::block_on(async {
            let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let addr: libp2p::Multiaddr = format!("/memory/{}", 1_000_000 + u64::from(std::process::id()))
                .parse()
                .unwrap();
            let mut listener = MemoryTransport::default().boxed();
            listener.listen_on(ListenerId::next(), addr.clone()).unwrap();
            let dial = MemoryTransport::default()
                .dial(
                    addr,
                    DialOpts {
                        role: Endpoint::Dialer,
                        port_use: PortUse::New,
                    },
                )
                .unwrap();
            let accept = async {
                loop {
                    if let TransportEvent::Incoming { upgrade, .. } = listener.select_next_some().await {
                        return upgrade.await.unwrap();
                    }
                }
            };
            let (client_io, server_io) = futures::join!(async { dial.await.unwrap() }, accept);
            let (client, server) = futures::join!(
                TlsConfig::new(&a).unwrap().upgrade_outbound(client_io, PROTOCOL),
                TlsConfig::new(&b).unwrap().upgrade_inbound(server_io, PROTOCOL),
            );
            let (seen_by_a, mut client) = client.unwrap();
            let (seen_by_b, mut server) = server.unwrap();
            assert_eq!(seen_by_a, b.public().to_peer_id());
            assert_eq!(seen_by_b, a.public().to_peer_id());
            let suite = client.get_ref().1.negotiated_cipher_suite().unwrap().suite();
            assert_eq!(suite, cipher_suites(aes_accelerated())[0].suite());

            client.write_all(b"range 7, please").await.unwrap();
            client.flush().await.unwrap();
            let mut asked = [0u8; 15];
            server.read_exact(&mut asked).await.unwrap();
            assert_eq!(&asked, b"range 7, please");
            server.write_all(b"here").await.unwrap();
            server.flush().await.unwrap();
            let mut answer = [0u8; 4];
            client.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"here");
        });
    }

    #[test]
    fn a_certificate_names_its_node() {
        let key = Keypair::generate_ed25519();
        let (cert, _) = certificate::generate(&key).unwrap();
        let parsed = certificate::parse(&cert).unwrap();
        assert_eq!(parsed.peer_id(), key.public().to_peer_id());
        assert!(Libp2pVerifier::check(&cert, &[]).is_ok());
        assert!(Libp2pVerifier::check(&cert, std::slice::from_ref(&cert)).is_err());
        assert!(Libp2pVerifier::check(&CertificateDer::from(vec![0u8; 40]), &[]).is_err());
    }
}
