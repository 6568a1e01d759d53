//! Accepting the `:authority` that stock gRPC clients send over unix sockets.
//!
//! gRPC C-core clients (Python `grpcio`, Ruby, C#, PHP) and grpc-java put the
//! socket path (`/run/banger/vmm.sock`) in the HTTP/2 `:authority` of every
//! request on a `unix:` channel. That is not an RFC 3986 authority, and h2 —
//! under tonic — answers such a request with `RST_STREAM(PROTOCOL_ERROR)`, so
//! the very first call of any such client fails. Nothing about the authority
//! matters on a local socket, so this module sits between the socket and h2:
//! it reads the client's HTTP/2 frames, decodes every header block with HPACK
//! (tracking the client's dynamic table), replaces an `:authority` that is not
//! a valid authority with `localhost`, and re-encodes the block as literals
//! without indexing, so h2's decoder never needs the client's table. All other
//! frames pass through unchanged, byte for byte; the server's direction is
//! not touched at all.
//!
//! A connection that does not start with the HTTP/2 preface is passed through
//! untouched (h2 refuses it as before). One that sends nothing for
//! [`PREFACE_TIMEOUT`] is closed, so idle connections cannot pile up. A header
//! block larger than [`MAX_HEADER_BLOCK`], or one that HPACK cannot decode,
//! closes the connection, as h2 itself would on a compression error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The client connection preface every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long a new connection may take to send the preface.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest header block (HEADERS plus CONTINUATIONs) we buffer; far more
/// than any gRPC request carries, small enough to bound memory per stream.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The authority that replaces one h2 would refuse.
const FALLBACK_AUTHORITY: &[u8] = b"localhost";
/// RFC 9113's default SETTINGS_HEADER_TABLE_SIZE, which tonic's h2 server
/// never changes: the most the client's HPACK encoder may use.
const HEADER_TABLE_SIZE: usize = 4096;
/// Every HTTP/2 peer must accept frames this large (RFC 9113 §4.2).
const MIN_MAX_FRAME_SIZE: usize = 16_384;

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A server-side connection whose incoming header blocks carry an
/// `:authority` h2 accepts.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// Bytes read from the client and not yet processed.
    inbuf: BytesMut,
    /// Processed bytes not yet handed to h2.
    outbuf: BytesMut,
    decoder: Decoder<'static>,
    block: Option<PendingBlock>,
    preface_deadline: Option<Pin<Box<Sleep>>>,
    eof: bool,
}

impl<S> std::fmt::Debug for AuthorityFix<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 24-byte preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Copying this many more payload bytes of a frame we do not rewrite.
    Passthrough(usize),
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Raw,
}

/// A header block whose CONTINUATION frames are still to come.
struct PendingBlock {
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The HEADERS frame's stream dependency and weight, if it had them.
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self::with_preface_timeout(inner, PREFACE_TIMEOUT)
    }

    fn with_preface_timeout(inner: S, preface_timeout: Duration) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        AuthorityFix {
            inner,
            state: State::Preface,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
            decoder,
            block: None,
            preface_deadline: Some(Box::pin(tokio::time::sleep(preface_timeout))),
            eof: false,
        }
    }

    /// Moves as many processed bytes from `inbuf` to `outbuf` as complete
    /// frames allow.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Raw => {
                    let all = self.inbuf.split();
                    self.outbuf.extend_from_slice(&all);
                    return Ok(());
                }
                State::Preface => {
                    let have = self.inbuf.len().min(PREFACE.len());
                    if self.inbuf[..have] != PREFACE[..have] {
                        self.state = State::Raw;
                        self.preface_deadline = None;
                        continue;
                    }
                    if have < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.inbuf.split_to(PREFACE.len());
                    self.outbuf.extend_from_slice(&preface);
                    self.preface_deadline = None;
                    self.state = State::FrameHeader;
                }
                State::Passthrough(remaining) => {
                    let n = remaining.min(self.inbuf.len());
                    if n == 0 {
                        return Ok(());
                    }
                    let chunk = self.inbuf.split_to(n);
                    self.outbuf.extend_from_slice(&chunk);
                    self.state = match remaining - n {
                        0 => State::FrameHeader,
                        left => State::Passthrough(left),
                    };
                }
                State::FrameHeader => {
                    if self.inbuf.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.inbuf[..FRAME_HEADER_LEN];
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let kind = h[3];
                    let flags = h[4];
                    let stream_id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    let in_block = self.block.is_some();
                    let rewrite = match kind {
                        TYPE_HEADERS if !in_block => true,
                        TYPE_CONTINUATION if in_block => true,
                        TYPE_HEADERS | TYPE_CONTINUATION => {
                            return Err(protocol("a header block was interrupted or never began"));
                        }
                        _ if in_block => {
                            return Err(protocol("a header block was interrupted"));
                        }
                        _ => false,
                    };
                    if !rewrite {
                        let header = self.inbuf.split_to(FRAME_HEADER_LEN);
                        self.outbuf.extend_from_slice(&header);
                        self.state = match len {
                            0 => State::FrameHeader,
                            len => State::Passthrough(len),
                        };
                        continue;
                    }
                    let buffered = self.block.as_ref().map_or(0, |b| b.fragment.len());
                    if buffered + len > MAX_HEADER_BLOCK {
                        return Err(protocol("header block too large"));
                    }
                    if self.inbuf.len() < FRAME_HEADER_LEN + len {
                        // Make room for the whole frame in one allocation.
                        self.inbuf
                            .reserve(FRAME_HEADER_LEN + len - self.inbuf.len());
                        return Ok(());
                    }
                    self.inbuf.advance(FRAME_HEADER_LEN);
                    let payload = self.inbuf.split_to(len);
                    self.header_frame(kind, flags, stream_id, &payload)?;
                }
            }
        }
    }

    /// Takes one HEADERS or CONTINUATION frame; emits the rewritten block
    /// once END_HEADERS arrives.
    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        if kind == TYPE_HEADERS {
            let mut body = payload;
            let mut pad = 0usize;
            if flags & FLAG_PADDED != 0 {
                let (&n, rest) = body
                    .split_first()
                    .ok_or_else(|| protocol("PADDED HEADERS frame without a pad length"))?;
                pad = usize::from(n);
                body = rest;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                if body.len() < 5 {
                    return Err(protocol("PRIORITY HEADERS frame too short"));
                }
                let mut p = [0u8; 5];
                p.copy_from_slice(&body[..5]);
                priority = Some(p);
                body = &body[5..];
            }
            if pad > body.len() {
                return Err(protocol("HEADERS padding longer than the frame"));
            }
            self.block = Some(PendingBlock {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                fragment: body[..body.len() - pad].to_vec(),
            });
        } else {
            let block = self.block.as_mut().expect("checked by the caller");
            if block.stream_id != stream_id {
                return Err(protocol("CONTINUATION on another stream"));
            }
            block.fragment.extend_from_slice(payload);
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().expect("set above");
        let mut fields = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                fields.push((name.into_owned(), value.into_owned()));
            })
            .map_err(|e| protocol(&format!("undecodable header block: {e:?}")))?;
        for (name, value) in &mut fields {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                *value = FALLBACK_AUTHORITY.to_vec();
            }
        }
        let encoded = encode_literals(&fields);
        write_header_frames(
            &mut self.outbuf,
            block.stream_id,
            block.end_stream,
            block.priority,
            &encoded,
        );
        Ok(())
    }
}

/// Whether h2 accepts `value` as a request's `:authority`.
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// HPACK: every field as "literal without indexing, new name", no Huffman
/// coding — no state for the decoder on the other side to track.
fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        encode_string(&mut out, name);
        encode_string(&mut out, value);
    }
    out
}

/// An HPACK string literal (RFC 7541 §5.2), not Huffman-coded.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first_byte_flags: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// One HEADERS frame and as many CONTINUATIONs as the block needs, each no
/// larger than every peer must accept.
fn write_header_frames(
    out: &mut BytesMut,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let prio_len = priority.map_or(0, |_| 5);
    let first_len = block.len().min(MIN_MAX_FRAME_SIZE - prio_len);
    let (first, mut rest) = block.split_at(first_len);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(out, prio_len + first.len(), TYPE_HEADERS, flags, stream_id);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let n = rest.len().min(MIN_MAX_FRAME_SIZE);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream_id.to_be_bytes());
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("HTTP/2: {what}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.outbuf.is_empty() {
                let n = buf.remaining().min(this.outbuf.len());
                buf.put_slice(&this.outbuf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut off by the client's close is dropped: h2 sees
                // the end of the connection, as it would have.
                return Poll::Ready(Ok(()));
            }
            if let Some(deadline) = this.preface_deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the idle limit",
                )));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                if this.state == State::Raw || this.state == State::Preface {
                    let rest = this.inbuf.split();
                    this.outbuf.extend_from_slice(&rest);
                }
                continue;
            }
            this.inbuf.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame_header(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Runs `input` through the rewriter and returns what h2 would read.
    async fn rewrite(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut fix = AuthorityFix::new(server);
        client.write_all(&input).await?;
        drop(client);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Splits h2 input back into (type, flags, stream, payload) frames.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE), "preface kept");
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let sid = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], sid, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// Decodes the header blocks of `frames` with one fresh decoder, as h2 does.
    fn decoded_blocks(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut decoder = Decoder::new();
        let mut blocks = Vec::new();
        let mut current = Vec::new();
        for (kind, flags, _, payload) in frames {
            let fragment = match *kind {
                TYPE_HEADERS if flags & FLAG_PRIORITY != 0 => &payload[5..],
                TYPE_HEADERS | TYPE_CONTINUATION => &payload[..],
                _ => continue,
            };
            current.extend_from_slice(fragment);
            if flags & FLAG_END_HEADERS != 0 {
                let fields = decoder.decode(&current).expect("decodable");
                blocks.push(
                    fields
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
                current.clear();
            }
        }
        blocks
    }

    fn request_headers(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    #[tokio::test]
    async fn socket_path_authority_becomes_localhost_through_the_dynamic_table() {
        // The stock encoder indexes incrementally: the second block refers
        // to the first one's entries, which only a decoder that tracked the
        // client's table can resolve.
        let mut encoder = loona_hpack::Encoder::new();
        let headers = request_headers("/run/banger/vmm.sock", "/banger.vmm.v1.Vmm/ListVms");
        let first = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let second = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        assert!(
            second.len() < first.len(),
            "the second block uses the dynamic table"
        );
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, b"")); // SETTINGS
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &second));
        let out = rewrite(input).await.unwrap();
        let frames = frames(&out);
        assert_eq!(frames[0], (0x4, 0, 0, vec![]), "SETTINGS untouched");
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
        let blocks = decoded_blocks(&frames);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block.iter().find(|(n, _)| n == ":authority").unwrap();
            assert_eq!(authority.1, "localhost");
            assert_eq!(
                block[2],
                (":path".into(), "/banger.vmm.v1.Vmm/ListVms".into())
            );
            assert_eq!(block.len(), 6, "no field lost: {block:?}");
        }
    }

    #[tokio::test]
    async fn valid_authority_is_kept_and_padding_priority_continuation_are_handled() {
        let mut encoder = loona_hpack::Encoder::new();
        let headers = request_headers("localhost:50051", "/x.Y/Z");
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, b) = block.split_at(block.len() / 2);
        let mut headers_payload = vec![3u8]; // pad length
        headers_payload.extend([0x80, 0, 0, 0, 16]); // exclusive dep on 0, weight 16
        headers_payload.extend_from_slice(a);
        headers_payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &headers_payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let out = rewrite(input).await.unwrap();
        let frames = frames(&out);
        assert_eq!(frames.len(), 1, "one HEADERS frame: {frames:?}");
        let (kind, flags, sid, payload) = &frames[0];
        assert_eq!((*kind, *sid), (TYPE_HEADERS, 5));
        assert_eq!(
            *flags,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS,
            "padding dropped, priority and END_STREAM kept"
        );
        assert_eq!(&payload[..5], &[0x80, 0, 0, 0, 16]);
        let blocks = decoded_blocks(&frames);
        assert!(
            blocks[0].contains(&(":authority".into(), "localhost:50051".into())),
            "{blocks:?}"
        );
    }

    #[tokio::test]
    async fn huge_blocks_are_split_into_continuations() {
        let mut headers = request_headers("/tmp/s.sock", "/x.Y/Z");
        headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(10_000).enumerate() {
            let last = (i + 1) * 10_000 >= block.len();
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            input.extend(frame(
                kind,
                if last { FLAG_END_HEADERS } else { 0 },
                1,
                chunk,
            ));
        }
        let frames = frames(&rewrite(input).await.unwrap());
        assert!(frames.len() >= 3);
        assert!(frames.iter().all(|f| f.3.len() <= MIN_MAX_FRAME_SIZE));
        let blocks = decoded_blocks(&frames);
        assert_eq!(blocks.len(), 1);
        assert!(blocks[0].contains(&(":authority".into(), "localhost".into())));
        assert!(
            blocks[0]
                .iter()
                .any(|(n, v)| n == "x-big" && v.len() == 40_000)
        );
    }

    #[tokio::test]
    async fn not_http2_passes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(rewrite(input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn broken_header_blocks_close_the_connection() {
        // An index into an empty dynamic table.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x10]));
        assert!(rewrite(input).await.is_err());
        // A DATA frame in the middle of a header block.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert!(rewrite(input).await.is_err());
        // A block over the cap is refused before it is buffered whole.
        let mut input = PREFACE.to_vec();
        let mut header = BytesMut::new();
        frame_header(&mut header, MAX_HEADER_BLOCK + 1, TYPE_HEADERS, 0, 1);
        input.extend_from_slice(&header);
        assert!(rewrite(input).await.is_err());
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed() {
        let (_client, server) = tokio::io::duplex(64);
        let mut fix = AuthorityFix::with_preface_timeout(server, Duration::from_millis(50));
        let mut buf = [0u8; 8];
        let err = fix.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn integers_encode_as_rfc7541_c1() {
        let mut out = Vec::new();
        encode_integer(&mut out, 10, 5, 0);
        assert_eq!(out, [10]);
        out.clear();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
