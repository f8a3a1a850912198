//! The PROXY protocol v2 (HAProxy's, as L4 load balancers send it): a binary header before the TLS handshake
//! naming the client's address, accepted only from the configured load-balancer addresses
//! (`[hop.http] proxy_protocol = { from = [...] }`), so logs, throttling and `Forwarded` see the agency's address
//! while TLS still ends at the gateway. Anything else from those addresses is refused; from anywhere else no header
//! is read at all (a client cannot claim another address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature of a v2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Longest address block (with TLVs) read: HAProxy sends at most a few hundred bytes.
const MAX_BLOCK: usize = 1024;

/// Why a load balancer's header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error(
        "no PROXY protocol v2 header (the load balancer must send one: HAProxy `send-proxy-v2`)"
    )]
    Missing,
    #[error("PROXY protocol version {0} (only v2 is accepted)")]
    Version(u8),
    #[error("a PROXY header of {0} bytes (at most {MAX_BLOCK})")]
    TooLong(usize),
    #[error("a PROXY header for address family {0:#04x} (TCP over IPv4 or IPv6 only)")]
    Family(u8),
    #[error("the connection ended inside the PROXY header")]
    Truncated,
}

/// Reads a v2 header from `io`: the client's address for a proxied connection (`PROXY`), or `None` for the
/// balancer's own (`LOCAL`, its health checks).
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if head[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_BLOCK {
        return Err(ProxyHeaderError::TooLong(len));
    }
    let mut block = vec![0u8; len];
    io.read_exact(&mut block)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if command == 0 {
        return Ok(None);
    }
    parse_addresses(head[13], &block).map(Some)
}

/// The source address of an address block of family/protocol `fam`.
fn parse_addresses(fam: u8, b: &[u8]) -> Result<SocketAddr, ProxyHeaderError> {
    let port = |at: usize| b.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match fam {
        // TCP over IPv4: source, destination addresses, then ports.
        0x11 => {
            let ip = b.get(..4).ok_or(ProxyHeaderError::Truncated)?;
            let src = Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
            Ok(SocketAddr::new(
                IpAddr::V4(src),
                port(8).ok_or(ProxyHeaderError::Truncated)?,
            ))
        }
        0x21 => {
            let ip: [u8; 16] = b
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or(ProxyHeaderError::Truncated)?;
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                port(32).ok_or(ProxyHeaderError::Truncated)?,
            ))
        }
        other => Err(ProxyHeaderError::Family(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x11, 0, 12]);
        h.extend(src);
        h.extend([10, 0, 0, 1]);
        h.extend(port.to_be_bytes());
        h.extend(8443u16.to_be_bytes());
        h
    }

    #[tokio::test]
    async fn a_v2_header_names_the_client_and_the_tls_that_follows_is_untouched() {
        let mut bytes = v4_header([203, 0, 113, 7], 51234);
        bytes.extend(b"\x16\x03\x01rest");
        let mut io = &bytes[..];
        let addr = read_header(&mut io).await.unwrap();
        assert_eq!(addr, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(io, b"\x16\x03\x01rest");
    }

    #[tokio::test]
    async fn ipv6_local_and_refusals() {
        let mut h = SIGNATURE.to_vec();
        h.extend([0x21, 0x21, 0, 36]);
        h.extend(Ipv6Addr::LOCALHOST.octets());
        h.extend(Ipv6Addr::LOCALHOST.octets());
        h.extend(4444u16.to_be_bytes());
        h.extend(8443u16.to_be_bytes());
        assert_eq!(
            read_header(&mut &h[..]).await.unwrap(),
            Some("[::1]:4444".parse().unwrap())
        );
        // LOCAL (a health check): no client address.
        let mut local = SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(read_header(&mut &local[..]).await.unwrap(), None);
        // A TLS ClientHello where the header should be; a v1 text header; an oversized block; a cut one.
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03abcdefgh";
        assert_eq!(
            read_header(&mut &hello[..]).await,
            Err(ProxyHeaderError::Missing)
        );
        let mut v1 = SIGNATURE.to_vec();
        v1.extend([0x11, 0x11, 0, 12]);
        assert_eq!(
            read_header(&mut &v1[..]).await,
            Err(ProxyHeaderError::Version(1))
        );
        let mut long = SIGNATURE.to_vec();
        long.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            read_header(&mut &long[..]).await,
            Err(ProxyHeaderError::TooLong(65535))
        );
        let cut = &v4_header([1, 2, 3, 4], 5)[..20];
        assert_eq!(
            read_header(&mut &cut[..]).await,
            Err(ProxyHeaderError::Truncated)
        );
        let mut unix = SIGNATURE.to_vec();
        unix.extend([0x21, 0x31, 0, 0]);
        assert_eq!(
            read_header(&mut &unix[..]).await,
            Err(ProxyHeaderError::Family(0x31))
        );
    }
}
