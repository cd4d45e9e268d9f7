//! Watches an SFTP subsystem stream (both directions) and reports file operations for the audit
//! log: which file was read or written and how many bytes, and path operations (remove, rename,
//! mkdir, rmdir, setstat, symlink), including those OpenSSH sends as FSETSTAT on an open file or
//! as extended requests (`posix-rename@openssh.com`, `hardlink@openssh.com`, `fsync@openssh.com`,
//! `lsetstat@openssh.com`, `copy-data`); an extended request it does not know is audited by name. It only observes: bytes are relayed unchanged whatever it
//! makes of them, and its memory is bounded (packet heads up to 8 KiB, at most 1,024 open
//! handles and outstanding requests).
//!
//! Protocol: draft-ietf-secsh-filexfer-02 (version 3, what OpenSSH speaks).

use std::collections::HashMap;

const HEAD: usize = 8 * 1024;
const MAX_TRACKED: usize = 1024;

/// One audited operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpOp {
    /// `read`, `write`, `open`, `remove`, `rename`, `mkdir`, `rmdir`, `setstat`, `symlink`,
    /// `hardlink`, `fsync`, `copy`, or `extended` (an extended request not known here; `path` is
    /// its name).
    pub op: &'static str,
    /// The path as the client sent it (for renames and links, the first one).
    pub path: String,
    /// Second path (rename and link targets, the destination of a copy).
    pub path2: Option<String>,
    /// Bytes the client read from the file.
    pub bytes_read: u64,
    /// Bytes the client wrote to the file.
    pub bytes_written: u64,
}

/// Splits a byte stream into SFTP packets, keeping only each packet's head.
#[derive(Debug, Default)]
struct Framer {
    len_buf: Vec<u8>,
    len: Option<usize>,
    head: Vec<u8>,
    skip: usize,
}

impl Framer {
    /// Feed bytes; `f(type, head_after_type, body_len_after_type)` per packet.
    fn feed(&mut self, mut data: &[u8], mut f: impl FnMut(u8, &[u8], usize)) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            match self.len {
                None => {
                    let n = (4 - self.len_buf.len()).min(data.len());
                    self.len_buf.extend_from_slice(data.get(..n).unwrap_or_default());
                    data = data.get(n..).unwrap_or_default();
                    if let Ok(b) = <[u8; 4]>::try_from(self.len_buf.as_slice()) {
                        self.len_buf.clear();
                        let len = u32::from_be_bytes(b) as usize;
                        if len > 0 {
                            self.len = Some(len);
                            self.head.clear();
                        }
                    }
                }
                Some(len) => {
                    let want = len.min(HEAD);
                    let n = (want - self.head.len()).min(data.len());
                    self.head.extend_from_slice(data.get(..n).unwrap_or_default());
                    data = data.get(n..).unwrap_or_default();
                    if self.head.len() == want {
                        if let Some((&t, rest)) = self.head.split_first() {
                            f(t, rest, len - 1);
                        }
                        self.skip = len - want;
                        self.len = None;
                    }
                }
            }
        }
    }
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (a, b) = self.0.split_first_chunk::<4>()?;
        self.0 = b;
        Some(u32::from_be_bytes(*a))
    }
    fn u64(&mut self) -> Option<u64> {
        let (a, b) = self.0.split_first_chunk::<8>()?;
        self.0 = b;
        Some(u64::from_be_bytes(*a))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        let (a, b) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = b;
        Some(a)
    }
    fn string(&mut self) -> Option<String> {
        self.bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    read: u64,
    written: u64,
}

/// Follows one SFTP channel.
#[derive(Debug, Default)]
pub struct SftpWatch {
    up: Framer,
    down: Framer,
    pending_open: HashMap<u32, String>,
    pending_read: HashMap<u32, Vec<u8>>,
    handles: HashMap<Vec<u8>, OpenFile>,
}

impl SftpWatch {
    /// Client → server bytes.
    pub fn client(&mut self, data: &[u8]) -> Vec<SftpOp> {
        let mut ops = Vec::new();
        let mut up = std::mem::take(&mut self.up);
        up.feed(data, |t, head, body_len| self.request(t, head, body_len, &mut ops));
        self.up = up;
        ops
    }

    /// Server → client bytes.
    pub fn server(&mut self, data: &[u8]) -> Vec<SftpOp> {
        let mut down = std::mem::take(&mut self.down);
        down.feed(data, |t, head, _| self.reply(t, head));
        self.down = down;
        Vec::new()
    }

    /// Files still open when the channel ends.
    pub fn finish(&mut self) -> Vec<SftpOp> {
        self.handles.drain().map(|(_, f)| file_op(f)).collect()
    }

    fn request(&mut self, t: u8, head: &[u8], _len: usize, ops: &mut Vec<SftpOp>) {
        let mut c = Cursor(head);
        let Some(id) = c.u32() else { return };
        let path_op = |op: &'static str, c: &mut Cursor<'_>| {
            c.string().map(|path| SftpOp {
                op,
                path,
                path2: None,
                bytes_read: 0,
                bytes_written: 0,
            })
        };
        match t {
            3 => {
                if let Some(p) = c.string()
                    && self.pending_open.len() < MAX_TRACKED
                {
                    self.pending_open.insert(id, p);
                }
            }
            4 => {
                if let Some(h) = c.bytes()
                    && let Some(f) = self.handles.remove(h)
                {
                    ops.push(file_op(f));
                }
            }
            5 => {
                if let Some(h) = c.bytes()
                    && self.handles.contains_key(h)
                    && self.pending_read.len() < MAX_TRACKED
                {
                    self.pending_read.insert(id, h.to_vec());
                }
            }
            6 => {
                if let Some(h) = c.bytes().map(<[u8]>::to_vec) {
                    let _offset = (c.u32(), c.u32());
                    if let (Some(n), Some(f)) = (c.u32(), self.handles.get_mut(&h)) {
                        f.written += u64::from(n);
                    }
                }
            }
            9 => ops.extend(path_op("setstat", &mut c)),
            10 => {
                if let Some(h) = c.bytes() {
                    ops.push(self.handle_op("setstat", h));
                }
            }
            200 => {
                if let Some(name) = c.string() {
                    ops.extend(self.extended(&name, &mut c));
                }
            }
            13 => ops.extend(path_op("remove", &mut c)),
            14 => ops.extend(path_op("mkdir", &mut c)),
            15 => ops.extend(path_op("rmdir", &mut c)),
            18 | 20 => {
                if let (Some(a), Some(b)) = (c.string(), c.string()) {
                    ops.push(SftpOp {
                        op: if t == 18 { "rename" } else { "symlink" },
                        path: a,
                        path2: Some(b),
                        bytes_read: 0,
                        bytes_written: 0,
                    });
                }
            }
            _ => {}
        }
    }

    /// An operation on an open file: its path, or `<handle …>` for a handle opened before the
    /// observer saw it (or beyond the tracked ones).
    fn handle_op(&self, op: &'static str, h: &[u8]) -> SftpOp {
        let path = match self.handles.get(h) {
            Some(f) => f.path.clone(),
            None => format!("<handle {}>", hex(h)),
        };
        SftpOp {
            op,
            path,
            path2: None,
            bytes_read: 0,
            bytes_written: 0,
        }
    }

    /// SSH_FXP_EXTENDED: the operations OpenSSH's sftp sends this way, audited as what they do.
    fn extended(&self, name: &str, c: &mut Cursor<'_>) -> Option<SftpOp> {
        let two = |op: &'static str, c: &mut Cursor<'_>| {
            let (a, b) = (c.string()?, c.string()?);
            Some(SftpOp {
                op,
                path: a,
                path2: Some(b),
                bytes_read: 0,
                bytes_written: 0,
            })
        };
        match name {
            "posix-rename@openssh.com" => two("rename", c),
            "hardlink@openssh.com" => two("hardlink", c),
            "fsync@openssh.com" => c.bytes().map(|h| self.handle_op("fsync", h)),
            "lsetstat@openssh.com" => c.string().map(|path| SftpOp {
                op: "setstat",
                path,
                path2: None,
                bytes_read: 0,
                bytes_written: 0,
            }),
            // draft-ietf-secsh-filexfer-extensions-00 section 7: read-handle, read-offset,
            // read-length (0: to the end), write-handle, write-offset.
            "copy-data" => {
                let from = c.bytes()?.to_vec();
                let (_offset, length) = (c.u64()?, c.u64()?);
                let to = c.bytes()?;
                let mut op = self.handle_op("copy", &from);
                op.path2 = Some(self.handle_op("copy", to).path);
                op.bytes_read = length;
                Some(op)
            }
            // Questions, not changes: like STAT and REALPATH, not audited.
            "statvfs@openssh.com"
            | "fstatvfs@openssh.com"
            | "limits@openssh.com"
            | "expand-path@openssh.com"
            | "home-directory"
            | "users-groups-by-id@openssh.com" => None,
            other => Some(SftpOp {
                op: "extended",
                path: other.to_string(),
                path2: None,
                bytes_read: 0,
                bytes_written: 0,
            }),
        }
    }

    fn reply(&mut self, t: u8, head: &[u8]) {
        let mut c = Cursor(head);
        let Some(id) = c.u32() else { return };
        match t {
            101 => {
                self.pending_open.remove(&id);
                self.pending_read.remove(&id);
            }
            102 => {
                if let (Some(path), Some(h)) = (self.pending_open.remove(&id), c.bytes())
                    && self.handles.len() < MAX_TRACKED
                {
                    self.handles.insert(
                        h.to_vec(),
                        OpenFile {
                            path,
                            read: 0,
                            written: 0,
                        },
                    );
                }
            }
            103 => {
                if let (Some(h), Some(n)) = (self.pending_read.remove(&id), c.u32())
                    && let Some(f) = self.handles.get_mut(&h)
                {
                    f.read += u64::from(n);
                }
            }
            _ => {}
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().take(32).map(|x| format!("{x:02x}")).collect()
}

fn file_op(f: OpenFile) -> SftpOp {
    let op = if f.written > 0 {
        "write"
    } else if f.read > 0 {
        "read"
    } else {
        "open"
    };
    SftpOp {
        op,
        path: f.path,
        path2: None,
        bytes_read: f.read,
        bytes_written: f.written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(t);
        v.extend_from_slice(body);
        v
    }
    fn s(x: &[u8]) -> Vec<u8> {
        let mut v = (x.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(x);
        v
    }
    fn id(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    #[test]
    fn upload_and_download_are_counted_even_byte_by_byte() {
        let mut w = SftpWatch::default();
        let mut client = Vec::new();
        client.extend(pkt(3, &[id(1), s(b"/tmp/up"), id(0x1a), id(0)].concat()));
        let data = vec![7u8; 20_000];
        client.extend(pkt(6, &[id(2), s(b"H1"), vec![0; 8], s(&data)].concat()));
        client.extend(pkt(5, &[id(3), s(b"H1"), vec![0; 8], id(100)].concat()));
        let close_at = client.len();
        client.extend(pkt(4, &[id(4), s(b"H1")].concat()));
        client.extend(pkt(13, &[id(5), s(b"/tmp/gone")].concat()));
        client.extend(pkt(18, &[id(6), s(b"/a"), s(b"/b")].concat()));
        let mut ops = Vec::new();
        // The HANDLE reply arrives before the WRITE is parsed.
        ops.extend(w.client(&client[..30]));
        w.server(&pkt(102, &[id(1), s(b"H1")].concat()));
        for b in &client[30..100] {
            ops.extend(w.client(std::slice::from_ref(b)));
        }
        // The READ's reply comes before the CLOSE.
        let split = close_at;
        ops.extend(w.client(&client[100..split]));
        w.server(&pkt(103, &[id(3), s(&[1u8; 100])].concat()));
        ops.extend(w.client(&client[split..]));
        assert_eq!(
            ops,
            vec![
                SftpOp {
                    op: "write",
                    path: "/tmp/up".into(),
                    path2: None,
                    bytes_read: 100,
                    bytes_written: 20_000
                },
                SftpOp {
                    op: "remove",
                    path: "/tmp/gone".into(),
                    path2: None,
                    bytes_read: 0,
                    bytes_written: 0
                },
                SftpOp {
                    op: "rename",
                    path: "/a".into(),
                    path2: Some("/b".into()),
                    bytes_read: 0,
                    bytes_written: 0
                },
            ]
        );
        assert!(w.finish().is_empty());
    }

    #[test]
    fn extended_requests_and_fsetstat_are_audited_as_what_they_do() {
        let mut w = SftpWatch::default();
        let ext = |i: u32, name: &[u8], rest: &[u8]| pkt(200, &[id(i), s(name), rest.to_vec()].concat());
        let mut ops = w.client(&pkt(3, &[id(1), s(b"/srv/a"), id(0x1a), id(0)].concat()));
        w.server(&pkt(102, &[id(1), s(b"HA")].concat()));
        ops.extend(w.client(&pkt(3, &[id(2), s(b"/srv/b"), id(0x1a), id(0)].concat())));
        w.server(&pkt(102, &[id(2), s(b"HB")].concat()));
        for p in [
            ext(3, b"posix-rename@openssh.com", &[s(b"/srv/x"), s(b"/srv/y")].concat()),
            ext(4, b"hardlink@openssh.com", &[s(b"/srv/y"), s(b"/srv/z")].concat()),
            ext(5, b"fsync@openssh.com", &s(b"HA")),
            pkt(10, &[id(6), s(b"HB"), id(4), id(0o600)].concat()),
            ext(
                7,
                b"copy-data",
                &[
                    s(b"HA"),
                    vec![0; 8],
                    4096u64.to_be_bytes().to_vec(),
                    s(b"HB"),
                    vec![0; 8],
                ]
                .concat(),
            ),
            ext(8, b"statvfs@openssh.com", &s(b"/")),
            ext(9, b"evil@example.com", &s(b"/etc/shadow")),
            ext(
                10,
                b"lsetstat@openssh.com",
                &[s(b"/srv/link"), id(4), id(0o644)].concat(),
            ),
            pkt(10, &[id(11), s(b"??"), id(0)].concat()),
        ] {
            ops.extend(w.client(&p));
        }
        let got: Vec<_> = ops
            .iter()
            .map(|o| (o.op, o.path.as_str(), o.path2.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("rename", "/srv/x", Some("/srv/y")),
                ("hardlink", "/srv/y", Some("/srv/z")),
                ("fsync", "/srv/a", None),
                ("setstat", "/srv/b", None),
                ("copy", "/srv/a", Some("/srv/b")),
                ("extended", "evil@example.com", None),
                ("setstat", "/srv/link", None),
                ("setstat", "<handle 3f3f>", None),
            ]
        );
        assert_eq!(ops[4].bytes_read, 4096);
    }

    #[test]
    fn garbage_is_survived() {
        let mut w = SftpWatch::default();
        for i in 0..10_000u32 {
            let b = i.wrapping_mul(2_654_435_761).to_le_bytes();
            w.client(&b);
            w.server(&b);
        }
        assert!(w.handles.len() <= MAX_TRACKED);
    }
}
