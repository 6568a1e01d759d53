//! Servers a test starts inside its own network namespace so a guest (or a
//! chroot) finds "the internet" it needs there: a static HTTP file server
//! (a Debian mirror's web root, a kernel archive) and a tiny DNS responder
//! that answers the mirror's host names with a local address. Both log what
//! they were asked, so a test can prove who fetched what.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request the file server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `GET` or `HEAD` (others are answered 405).
    pub method: String,
    /// The decoded URL path.
    pub path: String,
    /// The status sent.
    pub status: u16,
}

/// A mirror's misbehaviour, for the bad-input cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Serve the files.
    #[default]
    None,
    /// Answer every request with this status (e.g. 404, 500) and no file.
    Status(u16),
    /// Read the request and never answer (until the fault is cleared or
    /// the server dropped).
    Stall,
}

/// A static HTTP/1.1 file server (keep-alive, pipelining, `GET`/`HEAD`),
/// serving the files under a root and nothing outside it. Stops listening
/// on drop.
#[derive(Debug)]
pub struct FileServer {
    /// The bound address (the port is the real one when 0 was asked).
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Served>>>,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves `root` on `addr` (e.g. `0.0.0.0:80` in a test namespace, or
    /// `127.0.0.1:0`).
    pub fn start(root: &Path, addr: SocketAddr) -> FileServer {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("file server: bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let root = Arc::new(root.to_path_buf());
        let log: Arc<Mutex<Vec<Served>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let fault: Arc<Mutex<Fault>> = Arc::default();
        let acceptor = {
            let (log, stop, fault) = (log.clone(), stop.clone(), fault.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (root, log, fault, stop) =
                        (root.clone(), log.clone(), fault.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let _ = serve_connection(stream, &root, &log, &fault, &stop);
                    });
                }
            })
        };
        FileServer {
            addr,
            log,
            fault,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// `http://ADDR<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Served> {
        self.log.lock().unwrap().clone()
    }

    /// Misbehave from now on (or stop misbehaving with [`Fault::None`]).
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag and drops the listener.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve_connection(
    stream: TcpStream,
    root: &Path,
    log: &Mutex<Vec<Served>>,
    fault: &Mutex<Fault>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut words = request_line.split_whitespace();
        let (method, target, version) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or("/"),
            words.next().unwrap_or("HTTP/1.0"),
        );
        close |= version != "HTTP/1.1";
        let path = percent_decode(target.split(['?', '#']).next().unwrap_or("/"));
        let mut stalled = false;
        while *fault.lock().unwrap() == Fault::Stall && !stop.load(Ordering::SeqCst) {
            stalled = true;
            std::thread::sleep(Duration::from_millis(50));
        }
        if stalled {
            // Whatever the client does next, this connection is spent.
            return Ok(());
        }
        let forced = match *fault.lock().unwrap() {
            Fault::Status(status) => Some(status),
            _ => None,
        };
        let file = (forced.is_none() && (method == "GET" || method == "HEAD"))
            .then(|| resolve(root, &path))
            .flatten()
            .and_then(|p| std::fs::File::open(p).ok())
            .filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
        let status = match (forced, &file, method) {
            (Some(status), _, _) => status,
            (None, Some(_), _) => 200,
            (None, None, "GET" | "HEAD") => 404,
            _ => 405,
        };
        log.lock().unwrap().push(Served {
            method: method.to_owned(),
            path: path.clone(),
            status,
        });
        let connection = if close { "close" } else { "keep-alive" };
        match file {
            Some(mut file) => {
                let len = file.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\
                     Content-Type: application/octet-stream\r\nConnection: {connection}\r\n\r\n"
                )?;
                if method == "GET" {
                    std::io::copy(&mut file, &mut out)?;
                }
            }
            None => {
                let (reason, body) = match status {
                    404 => ("Not Found", "not found\n"),
                    405 => ("Method Not Allowed", "method not allowed\n"),
                    _ => ("Injected Fault", "injected fault\n"),
                };
                write!(
                    out,
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n\
                     Content-Type: text/plain\r\nConnection: {connection}\r\n\r\n",
                    body.len()
                )?;
                if method != "HEAD" {
                    out.write_all(body.as_bytes())?;
                }
            }
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The file for a URL path under `root`: only normal components (no `..`,
/// no absolute jumps); symlinks inside the tree are followed as the tree's
/// owner (the test) made them.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.strip_prefix('/')?);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(rel))
}

/// `%XX` decoded (apt quotes `~`, `+` and others in pool file names).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One question the DNS server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// The name asked, lowercase, without the final dot.
    pub name: String,
    /// Its type (1 = A, 28 = AAAA).
    pub qtype: u16,
    /// The response code sent (0 = NOERROR, 3 = NXDOMAIN).
    pub rcode: u8,
}

#[derive(Debug, Default)]
struct DnsState {
    names: Mutex<HashMap<String, Ipv4Addr>>,
    refusing: AtomicBool,
    queries: Mutex<Vec<DnsQuery>>,
    stop: AtomicBool,
}

/// A DNS responder over UDP: `A` for the configured names, an empty
/// NOERROR for their other types (so resolvers do not wait for `AAAA`),
/// NXDOMAIN for every other name — and for every name while
/// [`DnsServer::set_answering`] is off. Stops on drop.
#[derive(Debug)]
pub struct DnsServer {
    /// The bound address.
    pub addr: SocketAddr,
    state: Arc<DnsState>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Answers `names` (e.g. `deb.debian.org` → the bridge's gateway) on
    /// `addr` (e.g. `0.0.0.0:53` in a test namespace).
    pub fn start(addr: SocketAddr, names: &[(&str, Ipv4Addr)]) -> DnsServer {
        let socket =
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("dns server: bind {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(DnsState::default());
        state.names.lock().unwrap().extend(
            names
                .iter()
                .map(|(n, ip)| (n.trim_end_matches('.').to_ascii_lowercase(), *ip)),
        );
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !state.stop.load(Ordering::SeqCst) {
                    let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let refusing = state.refusing.load(Ordering::SeqCst);
                    let names = state.names.lock().unwrap().clone();
                    let lookup = |name: &str| {
                        if refusing {
                            None
                        } else {
                            names.get(name).copied()
                        }
                    };
                    if let Some((query, reply)) = answer(&buf[..len], lookup) {
                        state.queries.lock().unwrap().push(query);
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        DnsServer {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// Off: NXDOMAIN for every name (a site whose resolver does not know the
    /// mirror); on: the configured answers again.
    pub fn set_answering(&self, on: bool) {
        self.state.refusing.store(!on, Ordering::SeqCst);
    }

    /// Every question answered so far, in order.
    pub fn queries(&self) -> Vec<DnsQuery> {
        self.state.queries.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// The reply to one DNS message, with what was asked; `None` for what is
/// not a query at all (too short, or a response).
pub fn answer(
    msg: &[u8],
    lookup: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Option<(DnsQuery, Vec<u8>)> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None;
    }
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let opcode = (flags >> 11) & 0xf;
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let question = parse_question(&msg[12..]);
    let (query, question_bytes, rcode, address) = match question {
        Some((name, qtype, qlen)) if opcode == 0 && qdcount == 1 => {
            let address = lookup(&name);
            let rcode = if address.is_some() { 0 } else { RCODE_NXDOMAIN };
            let a = address.filter(|_| qtype == TYPE_A || qtype == TYPE_ANY);
            (
                DnsQuery { name, qtype, rcode },
                &msg[12..12 + qlen],
                rcode,
                a,
            )
        }
        other => {
            let rcode = if opcode != 0 {
                RCODE_NOTIMP
            } else {
                RCODE_FORMERR
            };
            let (name, qtype) = other.map(|(n, t, _)| (n, t)).unwrap_or_default();
            (DnsQuery { name, qtype, rcode }, &[][..], rcode, None)
        }
    };
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&msg[..2]);
    // QR, the query's opcode, AA, the query's RD, RA, the code.
    let reply_flags =
        0x8000 | (opcode << 11) | 0x0400 | (flags & 0x0100) | 0x0080 | u16::from(rcode);
    reply.extend_from_slice(&reply_flags.to_be_bytes());
    let qd = u16::from(!question_bytes.is_empty());
    reply.extend_from_slice(&qd.to_be_bytes());
    reply.extend_from_slice(&u16::from(address.is_some()).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question_bytes);
    if let Some(ip) = address {
        // A pointer to the question's name, type A, class IN, TTL 60 s.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ip.octets());
    }
    Some((query, reply))
}

/// `(name, qtype, length of the question)` of the first question; class
/// must be IN. Compression is not allowed in a question.
fn parse_question(data: &[u8]) -> Option<(String, u16, usize)> {
    let mut labels = Vec::new();
    let mut i = 0;
    loop {
        let len = usize::from(*data.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = data.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
        if i > 255 {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*data.get(i + 2)?, *data.get(i + 3)?]);
    (qclass == 1).then(|| (labels.join("."), qtype, i + 4))
}

/// A query message for `name`/`qtype` (for tests and probes).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut msg = id.to_be_bytes().to_vec();
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&qtype.to_be_bytes());
    msg.extend_from_slice(&[0, 1]);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const MIRROR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);

    fn lookup(name: &str) -> Option<Ipv4Addr> {
        (name == "deb.debian.org").then_some(MIRROR)
    }

    #[test]
    fn answers_a_for_a_known_name_in_any_case() {
        let (q, reply) = answer(&query(0x1234, "Deb.Debian.ORG.", 1), lookup).unwrap();
        assert_eq!(q.name, "deb.debian.org");
        assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
        assert_eq!(reply[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 1, "one answer");
        assert_eq!(&reply[reply.len() - 4..], &MIRROR.octets());
        assert_eq!(reply[2] & 0x81, 0x81, "a response, RD echoed");
    }

    #[test]
    fn aaaa_of_a_known_name_is_empty_and_unknown_names_do_not_exist() {
        let (_, reply) = answer(&query(1, "deb.debian.org", 28), lookup).unwrap();
        assert_eq!(reply[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 0);
        let (q, reply) = answer(&query(2, "example.org", 1), lookup).unwrap();
        assert_eq!(q.rcode, RCODE_NXDOMAIN);
        assert_eq!(reply[3] & 0x0f, RCODE_NXDOMAIN);
    }

    #[test]
    fn garbage_is_refused_as_such_and_responses_are_ignored() {
        assert!(answer(&[1, 2, 3], lookup).is_none());
        let mut response = query(3, "deb.debian.org", 1);
        response[2] |= 0x80;
        assert!(answer(&response, lookup).is_none());
        let mut truncated = query(4, "deb.debian.org", 1);
        truncated.truncate(20);
        let (q, reply) = answer(&truncated, lookup).unwrap();
        assert_eq!(q.rcode, RCODE_FORMERR);
        assert_eq!(reply.len(), 12, "header only");
    }

    #[test]
    fn dns_server_answers_over_udp_and_can_stop_answering() {
        let server = DnsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            &[("deb.debian.org", MIRROR)],
        );
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let ask = |id| {
            client
                .send_to(&query(id, "deb.debian.org", 1), server.addr)
                .unwrap();
            let mut buf = [0u8; 512];
            let (len, _) = client.recv_from(&mut buf).unwrap();
            buf[..len].to_vec()
        };
        let reply = ask(7);
        assert_eq!(&reply[reply.len() - 4..], &MIRROR.octets());
        server.set_answering(false);
        assert_eq!(ask(8)[3] & 0x0f, RCODE_NXDOMAIN);
        assert_eq!(server.queries().len(), 2);
    }

    #[test]
    fn file_server_serves_files_keeps_alive_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("debian/pool")).unwrap();
        std::fs::write(root.join("debian/pool/a~1+b.deb"), b"DEB").unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        let server = FileServer::start(&root, "127.0.0.1:0".parse().unwrap());
        let mut conn = TcpStream::connect(server.addr).unwrap();
        // Two pipelined requests on one connection, then a closing one.
        conn.write_all(
            b"GET /debian/pool/a%7e1%2bb.deb HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /debian/pool/a~1+b.deb HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /../secret HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut all = String::new();
        conn.read_to_string(&mut all).unwrap();
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
        assert_eq!(
            all.matches("\r\n\r\nDEB").count(),
            1,
            "HEAD has no body: {all}"
        );
        assert!(all.contains("HTTP/1.1 404"), "{all}");
        let log = server.requests();
        assert_eq!(log[0].path, "/debian/pool/a~1+b.deb");
        assert_eq!(
            log.iter().map(|s| s.status).collect::<Vec<_>>(),
            vec![200, 200, 404]
        );
        let addr = server.addr;
        drop(server);
        assert!(TcpStream::connect(addr).is_err(), "stopped listening");
    }

    #[test]
    fn file_server_faults_answer_a_status_or_stall() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"F").unwrap();
        let server = FileServer::start(root.path(), "127.0.0.1:0".parse().unwrap());
        let get = |timeout| {
            let mut conn = TcpStream::connect(server.addr).unwrap();
            conn.set_read_timeout(Some(timeout)).unwrap();
            conn.write_all(b"GET /f HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut all = String::new();
            conn.read_to_string(&mut all).map(|_| all)
        };
        server.set_fault(Fault::Status(500));
        let got = get(Duration::from_secs(5)).unwrap();
        assert!(got.starts_with("HTTP/1.1 500 "), "{got}");
        server.set_fault(Fault::Stall);
        assert!(
            get(Duration::from_millis(300)).is_err(),
            "a stalled server answered"
        );
        server.set_fault(Fault::None);
        assert!(get(Duration::from_secs(5)).unwrap().ends_with("\r\n\r\nF"));
    }
}
