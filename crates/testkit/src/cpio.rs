//! A writer for the "newc" cpio format (the one the kernel's initramfs unpacker reads). Written here
//! rather than by shelling out to `cpio` so device nodes such as `/dev/console` can be put in an
//! image without root and without touching the host filesystem.
//!
//! Format: per entry a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of four bytes (counting the header), then the data
//! padded to a multiple of four; the archive ends with an entry named `TRAILER!!!`.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// Streams entries into `out`; call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    /// A directory; `name` has no leading slash (`dev`, `lib/modules`).
    pub fn directory(&mut self, name: &str, permissions: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (permissions & 0o7777), 2, (0, 0), &[])
    }

    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (permissions & 0o7777), 1, (0, 0), data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    pub fn char_device(
        &mut self,
        name: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        self.entry(
            name,
            S_IFCHR | (permissions & 0o7777),
            1,
            (major, minor),
            &[],
        )
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_inode = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        if name.is_empty() || name.starts_with('/') || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name '{name}' must be relative and non-empty"),
            ));
        }
        let file_size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB"))
        })?;
        let inode = self.next_inode;
        self.next_inode += 1;
        let name_size = name.len() + 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed so images are reproducible
            file_size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // check (unused by newc)
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_newc() {
        let mut writer = CpioWriter::new(Vec::new());
        writer.file("init", 0o755, b"hello").expect("file");
        let bytes = writer.finish().expect("finish");
        let header = std::str::from_utf8(&bytes[..110]).expect("ascii header");
        assert!(header.starts_with("070701"));
        // mode field (second) and file size (seventh) and name size (twelfth).
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "00000005");
        assert_eq!(&header[94..102], "00000005");
        // name "init\0" ends at 115, padded to 116; data starts there.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..121], b"hello");
        assert_eq!(bytes.len() % 4, 0);
        assert!(
            bytes
                .windows(TRAILER.len())
                .any(|window| window == TRAILER.as_bytes())
        );
    }

    #[test]
    fn absolute_names_are_refused() {
        let mut writer = CpioWriter::new(Vec::new());
        assert!(writer.file("/etc/passwd", 0o644, b"").is_err());
        assert!(writer.directory("", 0o755).is_err());
    }

    /// The host's GNU cpio must read back exactly what was written (names, types, contents).
    #[test]
    fn gnu_cpio_lists_and_extracts_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = CpioWriter::new(Vec::new());
        writer.directory("bin", 0o755).expect("dir");
        writer
            .file("bin/tool", 0o755, b"#!/bin/sh\necho hi\n")
            .expect("file");
        writer.symlink("bin/alias", "tool").expect("symlink");
        writer
            .file("odd-length-name.txt", 0o644, b"abc")
            .expect("file");
        let archive = writer.finish().expect("finish");
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).expect("write");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let status = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "-F"])
            .arg(&path)
            .current_dir(&out)
            .status()
            .expect("cpio must be installed");
        assert!(status.success());
        assert_eq!(
            std::fs::read(out.join("bin/tool")).expect("tool"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(out.join("bin/alias")).expect("link"),
            std::path::Path::new("tool")
        );
        assert_eq!(
            std::fs::read(out.join("odd-length-name.txt")).expect("txt"),
            b"abc"
        );
    }
}
