//! Reading a kernel module's `.modinfo` section: the NUL-separated `key=value` strings modpost writes
//! (`vermagic`, `name`, `depends`, `srcversion`, repeated `alias`...). This is what the kernel itself
//! checks at load time, so reading it first lets the loader refuse a module with a precise message instead
//! of the kernel's "Invalid module format".

use std::borrow::Cow;
use std::path::Path;

use goblin::elf::Elf;

use crate::error::{LoaderError, Result};

/// The largest uncompressed module image the loader accepts (the biggest in-tree modules are ~30 MiB).
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;

/// The parsed `.modinfo` of one module, in section order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModInfo {
    entries: Vec<(String, String)>,
}

impl ModInfo {
    /// Parses the raw `.modinfo` section bytes. Empty strings (alignment padding) are skipped; a string
    /// without `=` or with a non-UTF-8 byte is an error naming its position.
    pub fn parse_section(section: &[u8]) -> Result<ModInfo, String> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        for raw in section.split(|&b| b == 0) {
            let at = offset;
            offset += raw.len() + 1;
            if raw.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(raw)
                .map_err(|_| format!(".modinfo entry at byte {at} is not UTF-8"))?;
            let (key, value) = text
                .split_once('=')
                .ok_or_else(|| format!(".modinfo entry at byte {at} has no '=' ({text:?})"))?;
            entries.push((key.to_owned(), value.to_owned()));
        }
        Ok(ModInfo { entries })
    }

    /// Extracts and parses `.modinfo` from an uncompressed ELF module image.
    pub fn from_elf(image: &[u8]) -> Result<ModInfo, String> {
        read_modinfo(&mut InMemory(image))
    }

    /// Reads a module file (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`), decompressing it in memory.
    pub fn from_file(path: &Path) -> Result<(ModInfo, Vec<u8>)> {
        let image = read_module_image(path)?;
        let info = ModInfo::from_elf(&image)
            .map_err(|reason| LoaderError::incompatible(path.display().to_string(), reason))?;
        Ok((info, image))
    }

    /// Only the `.modinfo` of a module file. An uncompressed `.ko` is read in pieces (its header,
    /// section table, section names and `.modinfo`: a few KiB of a file that may hold megabytes of
    /// code, symbols and relocations); a compressed one is decompressed whole, as it must be.
    pub fn of_file(path: &Path) -> Result<ModInfo> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let unreadable = |reason: String| {
            LoaderError::incompatible(
                path.display().to_string(),
                format!("cannot read module image: {reason}"),
            )
        };
        if !name.ends_with(".ko") {
            return Ok(ModInfo::from_file(path)?.0);
        }
        let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
        let len = file
            .metadata()
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        read_modinfo(&mut InFile { file, len })
            .map_err(|reason| LoaderError::incompatible(path.display().to_string(), reason))
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order (e.g. `alias`).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All entries in section order.
    pub fn entries(&self) -> &[(String, String)] {
        &self.entries
    }

    /// `name=`: the kbuild module name.
    pub fn name(&self) -> Option<&str> {
        self.get("name").filter(|n| !n.is_empty())
    }

    /// `vermagic=`.
    pub fn vermagic(&self) -> Option<&str> {
        self.get("vermagic")
    }

    /// `srcversion=` (present when the module has MODULE_VERSION or the kernel adds it to all modules).
    pub fn srcversion(&self) -> Option<&str> {
        self.get("srcversion")
    }

    /// `version=` (MODULE_VERSION).
    pub fn version(&self) -> Option<&str> {
        self.get("version")
    }

    /// `depends=`: module names this one needs, empty entries dropped.
    pub fn depends(&self) -> Vec<String> {
        self.get("depends")
            .map(|d| {
                d.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Random access to a module's bytes, so `.modinfo` is found by reading only what leads to it.
trait ModuleBytes {
    /// Length of the whole image.
    fn len(&self) -> u64;
    /// `len` bytes at `offset`; the caller checked that they lie within [`ModuleBytes::len`].
    fn at(&mut self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, String>;
}

struct InMemory<'a>(&'a [u8]);

impl ModuleBytes for InMemory<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn at(&mut self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, String> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(len)?))
            .map(Cow::Borrowed)
            .ok_or_else(|| format!("{len} bytes at {offset} lie outside the image"))
    }
}

struct InFile {
    file: std::fs::File,
    len: u64,
}

impl ModuleBytes for InFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn at(&mut self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, String> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
        Ok(Cow::Owned(bytes))
    }
}

/// `len` bytes at `offset` of `bytes`, refused (not read) when they do not lie within it.
fn within(bytes: &dyn ModuleBytes, what: &str, offset: u64, len: u64) -> Result<usize, String> {
    match offset.checked_add(len) {
        Some(end) if end <= bytes.len() => {
            usize::try_from(len).map_err(|_| format!("{what} is too large"))
        }
        _ => Err(format!(
            "{what} {offset}..{} lies outside the {}-byte file",
            offset.saturating_add(len),
            bytes.len()
        )),
    }
}

/// Finds and parses `.modinfo` from the ELF header, the section header table and the section-name
/// table alone: a module's symbols and relocations (thousands of entries) are never parsed.
fn read_modinfo(bytes: &mut dyn ModuleBytes) -> Result<ModInfo, String> {
    use goblin::container::{Container, Ctx};
    use goblin::elf::header::{ET_REL, Header};
    use goblin::elf::section_header::{SHN_XINDEX, SHT_NOBITS, SectionHeader};

    let invalid = |e: &dyn std::fmt::Display| format!("not a valid ELF object: {e}");
    let head_len = bytes
        .len()
        .min(goblin::elf::header::header64::SIZEOF_EHDR as u64) as usize;
    let header: Header = Elf::parse_header(&bytes.at(0, head_len)?).map_err(|e| invalid(&e))?;
    if header.e_type != ET_REL {
        return Err(format!(
            "ELF type {} is not a relocatable object (kernel modules are ET_REL)",
            header.e_type
        ));
    }
    let container = header.container().map_err(|e| invalid(&e))?;
    let ctx = Ctx::new(container, header.endianness().map_err(|e| invalid(&e))?);
    let entry = SectionHeader::size(ctx);
    if usize::from(header.e_shentsize) != entry {
        return Err(invalid(&format_args!(
            "section header entries are {} bytes, not the {entry} of {}",
            header.e_shentsize,
            if container == Container::Big {
                "ELF64"
            } else {
                "ELF32"
            }
        )));
    }
    if header.e_shoff == 0 {
        return Err("has no .modinfo section".to_owned());
    }
    let first = within(
        &*bytes,
        "the section header table",
        header.e_shoff,
        entry as u64,
    )?;
    let mut count = u64::from(header.e_shnum);
    let mut names_index = u64::from(header.e_shstrndx);
    if count == 0 || names_index == u64::from(SHN_XINDEX) {
        // More sections than the header's fields hold: the counts live in section 0.
        let zero = SectionHeader::parse_from(&bytes.at(header.e_shoff, first)?, 0, 1, ctx)
            .map_err(|e| invalid(&e))?;
        if count == 0 {
            count = zero[0].sh_size;
        }
        if names_index == u64::from(SHN_XINDEX) {
            names_index = u64::from(zero[0].sh_link);
        }
    }
    let table_len = count
        .checked_mul(entry as u64)
        .ok_or_else(|| invalid(&"section count overflows"))?;
    let table_len = within(
        &*bytes,
        "the section header table",
        header.e_shoff,
        table_len,
    )?;
    let sections = SectionHeader::parse_from(
        &bytes.at(header.e_shoff, table_len)?,
        0,
        count as usize,
        ctx,
    )
    .map_err(|e| invalid(&e))?;
    let names = usize::try_from(names_index)
        .ok()
        .and_then(|i| sections.get(i))
        .ok_or_else(|| invalid(&format_args!("section-name table index {names_index}")))?;
    let names_len = within(
        &*bytes,
        "the section-name table",
        names.sh_offset,
        names.sh_size,
    )?;
    let section = {
        let names = bytes.at(names.sh_offset, names_len)?;
        let name_of = |section: &SectionHeader| {
            let rest = names.get(section.sh_name..)?;
            Some(&rest[..rest.iter().position(|&b| b == 0)?])
        };
        sections
            .iter()
            .find(|section| name_of(section) == Some(b".modinfo".as_slice()))
            .cloned()
            .ok_or_else(|| "has no .modinfo section".to_owned())?
    };
    if section.sh_type == SHT_NOBITS {
        return Err(".modinfo section has no file contents".to_owned());
    }
    let len = within(
        &*bytes,
        ".modinfo section",
        section.sh_offset,
        section.sh_size,
    )?;
    ModInfo::parse_section(&bytes.at(section.sh_offset, len)?)
}

/// Reads a module file and returns the uncompressed ELF image, decompressing per its magic bytes (the
/// packaging crate checks that the suffix agrees and bounds the output size).
pub fn read_module_image(path: &Path) -> Result<Vec<u8>> {
    driver_package::decompress_module_file(path, MAX_MODULE_BYTES).map_err(|e| {
        LoaderError::incompatible(
            path.display().to_string(),
            format!("cannot read module image: {e}"),
        )
    })
}

/// The kbuild module name derived from a file name (`foo-bar.ko.zst` -> `foo_bar`), as modprobe does.
pub fn module_name_from_file_name(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".ko")
        .or_else(|| file_name.strip_suffix(".ko.gz"))
        .or_else(|| file_name.strip_suffix(".ko.xz"))
        .or_else(|| file_name.strip_suffix(".ko.zst"))?;
    Some(stem.replace('-', "_"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 relocatable object with a `.modinfo` and a `.shstrtab` section, written by hand
    /// following the ELF spec, so the parser is exercised on a real container layout.
    pub(crate) fn tiny_module(modinfo: &[u8], e_type: u16) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let header_len = 64usize;
        let modinfo_off = header_len;
        let shstrtab_off = modinfo_off + modinfo.len();
        let mut sh_off = shstrtab_off + shstrtab.len();
        sh_off = sh_off.div_ceil(8) * 8;
        let mut out = Vec::new();
        out.extend_from_slice(b"\x7fELF");
        out.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SYSV
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&e_type.to_le_bytes());
        out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // entry
        out.extend_from_slice(&0u64.to_le_bytes()); // phoff
        out.extend_from_slice(&(sh_off as u64).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        out.extend_from_slice(&0u16.to_le_bytes()); // phentsize
        out.extend_from_slice(&0u16.to_le_bytes()); // phnum
        out.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        out.extend_from_slice(&3u16.to_le_bytes()); // shnum
        out.extend_from_slice(&2u16.to_le_bytes()); // shstrndx
        assert_eq!(out.len(), header_len);
        out.extend_from_slice(modinfo);
        out.extend_from_slice(shstrtab);
        out.resize(sh_off, 0);
        let section =
            |out: &mut Vec<u8>, name: u32, kind: u32, flags: u64, off: usize, size: usize| {
                out.extend_from_slice(&name.to_le_bytes());
                out.extend_from_slice(&kind.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes()); // addr
                out.extend_from_slice(&(off as u64).to_le_bytes());
                out.extend_from_slice(&(size as u64).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes()); // link
                out.extend_from_slice(&0u32.to_le_bytes()); // info
                out.extend_from_slice(&1u64.to_le_bytes()); // addralign
                out.extend_from_slice(&0u64.to_le_bytes()); // entsize
            };
        section(&mut out, 0, 0, 0, 0, 0);
        section(&mut out, 1, 1, 2, modinfo_off, modinfo.len()); // PROGBITS, SHF_ALLOC
        section(&mut out, 10, 3, 0, shstrtab_off, shstrtab.len()); // STRTAB
        out
    }

    pub(crate) fn modinfo_bytes(entries: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in entries {
            bytes.extend_from_slice(entry.as_bytes());
            bytes.push(0);
            bytes.push(0); // modpost pads entries; the parser must skip empty strings
        }
        bytes
    }

    #[test]
    fn parses_modinfo_from_a_relocatable_elf() {
        let image = tiny_module(
            &modinfo_bytes(&[
                "version=v0.1.2",
                "license=GPL",
                "alias=pci:v00008086d*",
                "alias=pci:v000010ECd*",
                "depends=virtio,virtio_ring",
                "srcversion=ABCDEF0123456789ABCDEF0",
                "name=example_driver",
                "vermagic=6.1.0-47-amd64 SMP preempt mod_unload modversions ",
            ]),
            goblin::elf::header::ET_REL,
        );
        let info = ModInfo::from_elf(&image).expect("valid module");
        assert_eq!(info.name(), Some("example_driver"));
        assert_eq!(
            info.vermagic(),
            Some("6.1.0-47-amd64 SMP preempt mod_unload modversions ")
        );
        assert_eq!(
            info.depends(),
            vec!["virtio".to_owned(), "virtio_ring".to_owned()]
        );
        assert_eq!(info.get_all("alias").count(), 2);
        assert_eq!(info.srcversion(), Some("ABCDEF0123456789ABCDEF0"));
        assert_eq!(info.version(), Some("v0.1.2"));
    }

    #[test]
    fn empty_depends_means_no_dependencies() {
        let info = ModInfo::parse_section(b"depends=\0name=x\0").expect("valid");
        assert!(info.depends().is_empty());
    }

    #[test]
    fn an_executable_or_garbage_is_not_a_module() {
        let exe = tiny_module(&modinfo_bytes(&["name=x"]), goblin::elf::header::ET_EXEC);
        assert!(
            ModInfo::from_elf(&exe)
                .expect_err("ET_EXEC")
                .contains("ET_REL")
        );
        assert!(ModInfo::from_elf(b"\x7fELF garbage").is_err());
        assert!(ModInfo::from_elf(b"not elf at all").is_err());
    }

    #[test]
    fn missing_modinfo_and_malformed_entries_are_errors() {
        let mut image = tiny_module(&modinfo_bytes(&["name=x"]), goblin::elf::header::ET_REL);
        // Rename the section so it is no longer found.
        let pos = image
            .windows(8)
            .position(|w| w == b".modinfo")
            .expect("present");
        image[pos + 1] = b'X';
        assert!(
            ModInfo::from_elf(&image)
                .expect_err("no section")
                .contains(".modinfo")
        );
        assert!(
            ModInfo::parse_section(b"name=x\0garbage\0")
                .expect_err("no =")
                .contains("byte 7")
        );
        assert!(ModInfo::parse_section(b"name=\xff\0").is_err());
    }

    #[test]
    fn section_outside_the_file_is_refused_not_read() {
        let mut image = tiny_module(&modinfo_bytes(&["name=x"]), goblin::elf::header::ET_REL);
        let len = image.len();
        image.truncate(len - 64 * 3 + 64 + 32); // keep the section table's start, cut .modinfo's size
        assert!(ModInfo::from_elf(&image).is_err());
    }

    #[test]
    fn a_module_file_is_read_in_pieces_with_the_same_result_as_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = tiny_module(
            &modinfo_bytes(&["name=x", "vermagic=6.1.0-47-amd64 SMP "]),
            goblin::elf::header::ET_REL,
        );
        let plain = dir.path().join("x.ko");
        std::fs::write(&plain, &image).expect("write");
        let whole = ModInfo::from_elf(&image).expect("valid");
        assert_eq!(ModInfo::of_file(&plain).expect("plain"), whole);
        // A compressed name goes through decompression, which checks that the content agrees.
        let named_xz = dir.path().join("x.ko.xz");
        std::fs::write(&named_xz, &image).expect("write");
        let error = ModInfo::of_file(&named_xz).expect_err("not xz").to_string();
        assert!(error.contains("cannot read module image"), "{error}");

        // A file cut inside its section table is refused, not read past its end.
        std::fs::write(&plain, &image[..image.len() - 10]).expect("write");
        let error = ModInfo::of_file(&plain).expect_err("cut short").to_string();
        assert!(error.contains("section header table"), "{error}");
    }

    #[test]
    fn counts_beyond_the_header_fields_are_read_from_section_zero() {
        // More than 0xff00 sections: e_shnum is 0 and e_shstrndx SHN_XINDEX, the real values are
        // section 0's sh_size and sh_link (gABI "Extended Section Indexes").
        let mut image = tiny_module(&modinfo_bytes(&["name=x"]), goblin::elf::header::ET_REL);
        let sh_off = u64::from_le_bytes(image[40..48].try_into().expect("8 bytes")) as usize;
        image[60..62].copy_from_slice(&0u16.to_le_bytes());
        image[62..64].copy_from_slice(&0xffffu16.to_le_bytes());
        image[sh_off + 32..sh_off + 40].copy_from_slice(&3u64.to_le_bytes());
        image[sh_off + 40..sh_off + 44].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            ModInfo::from_elf(&image).expect("extended counts").name(),
            Some("x")
        );
    }

    #[test]
    fn section_headers_of_the_wrong_size_are_refused() {
        let mut image = tiny_module(&modinfo_bytes(&["name=x"]), goblin::elf::header::ET_REL);
        image[58..60].copy_from_slice(&40u16.to_le_bytes());
        let error = ModInfo::from_elf(&image).expect_err("shentsize 40");
        assert!(
            error.contains("section header entries are 40 bytes"),
            "{error}"
        );
    }

    #[test]
    fn module_names_come_from_file_names_like_modprobe() {
        assert_eq!(
            module_name_from_file_name("example-driver.ko.zst").as_deref(),
            Some("example_driver")
        );
        assert_eq!(
            module_name_from_file_name("virtio_net.ko.xz").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(module_name_from_file_name("README"), None);
    }
}
