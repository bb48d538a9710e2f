//! Initramfs images for test nodes: a gzip-compressed newc cpio holding a static busybox, an
//! `/init`, kernel modules taken from a [`KernelImage`] (uncompressed, dependency closure
//! included) and whatever extra files the caller needs (a static loader, its config, keys).
//!
//! [`StandardInit`] writes the usual `/init`: mount the pseudo filesystems, print
//! [`INIT_MARKER`], insmod the modules in order, bring up eth0 (static 10.0.2.15/24 via 10.0.2.2,
//! which is what qemu's user network expects, or DHCP), run the caller's commands, print
//! [`END_MARKER`] with their exit status and power off.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use kernel_id::Arch;

use crate::apt::download_deb;
use crate::cache_dir;
use crate::cpio::CpioWriter;
use crate::kernel::KernelImage;
use crate::lock::{CacheLock, scratch_path};

/// Printed by [`StandardInit`] once `/proc`, `/sys` and `/dev` are mounted.
pub const INIT_MARKER: &str = "TESTKIT-INIT-READY";
/// Printed by [`StandardInit`] after the caller's commands, as `TESTKIT-INIT-END rc=<status>`.
pub const END_MARKER: &str = "TESTKIT-INIT-END";
/// Printed by [`StandardInit::switch_root`] when the root device cannot be mounted.
pub const SWITCH_ROOT_FAILED_MARKER: &str = "TESTKIT-SWITCH-ROOT-FAILED";
/// Printed by [`StandardInit`] for each module insmod refused, followed by the module path.
pub const INSMOD_FAILED_MARKER: &str = "TESTKIT-INSMOD-FAILED";

#[derive(Clone, Debug)]
enum Entry {
    Directory,
    File { data: Vec<u8>, permissions: u32 },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// An initramfs under construction. Paths are absolute guest paths (`/bin/loader`); parent
/// directories are created implicitly.
#[derive(Clone, Debug)]
pub struct Initramfs {
    arch: Arch,
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// The skeleton for `arch`: busybox as `/bin/busybox` (and `/bin/sh`), the usual directories,
    /// and `/dev/console` + `/dev/null` so `/init` has a console before devtmpfs is mounted.
    pub fn new(arch: Arch) -> Result<Initramfs> {
        let mut image = Initramfs {
            arch,
            entries: BTreeMap::new(),
        };
        for dir in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/etc",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/root",
            "/var",
            "/lib/modules",
        ] {
            image.directory(dir)?;
        }
        image.insert("/dev/console", Entry::CharDevice { major: 5, minor: 1 })?;
        image.insert("/dev/null", Entry::CharDevice { major: 1, minor: 3 })?;
        let busybox = static_busybox(arch)?;
        image.file_from_host("/bin/busybox", &busybox, 0o755)?;
        image.symlink("/bin/sh", "busybox")?;
        Ok(image)
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Sets `/init` (mode 0755).
    pub fn init(&mut self, script: &str) -> Result<&mut Self> {
        self.file("/init", script.as_bytes(), 0o755)
    }

    pub fn directory(&mut self, path: &str) -> Result<&mut Self> {
        self.insert(path, Entry::Directory)
    }

    pub fn file(&mut self, path: &str, data: &[u8], permissions: u32) -> Result<&mut Self> {
        self.insert(
            path,
            Entry::File {
                data: data.to_vec(),
                permissions,
            },
        )
    }

    /// Copies a host file in (e.g. the static loader binary).
    pub fn file_from_host(
        &mut self,
        path: &str,
        host_path: &Path,
        permissions: u32,
    ) -> Result<&mut Self> {
        let data =
            fs::read(host_path).with_context(|| format!("reading {}", host_path.display()))?;
        self.file(path, &data, permissions)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        self.insert(path, Entry::Symlink(target.to_owned()))
    }

    /// Adds `names` and their dependencies from `kernel` under `/lib/modules/<release>/`,
    /// uncompressed, and returns their guest paths in load order. Built-in modules are skipped.
    pub fn kernel_modules(&mut self, kernel: &KernelImage, names: &[&str]) -> Result<Vec<String>> {
        if kernel.arch() != self.arch {
            bail!(
                "kernel {} is {} but this initramfs is for {}",
                kernel.release(),
                kernel.arch().as_str(),
                self.arch.as_str()
            );
        }
        let mut guest_paths = Vec::new();
        for module in kernel.module_closure(names)? {
            let guest_path = format!(
                "/lib/modules/{}/{}",
                kernel.release(),
                module.uncompressed_relative_path()
            );
            let contents = module.contents()?;
            self.file(&guest_path, &contents, 0o644)?;
            guest_paths.push(guest_path);
        }
        Ok(guest_paths)
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<&mut Self> {
        let relative = validate_guest_path(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = relative.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Directory);
                }
                Some(Entry::Directory) => {}
                Some(_) => bail!("initramfs path {path}: /{parent} is not a directory"),
            }
        }
        self.entries.insert(relative.to_owned(), entry);
        Ok(self)
    }

    /// The uncompressed cpio archive.
    pub fn to_cpio(&self) -> Result<Vec<u8>> {
        // BTreeMap order puts every directory before its contents ("a" < "a/b").
        let mut writer = CpioWriter::new(Vec::new());
        for (path, entry) in &self.entries {
            match entry {
                Entry::Directory => writer.directory(path, 0o755)?,
                Entry::File { data, permissions } => writer.file(path, *permissions, data)?,
                Entry::Symlink(target) => writer.symlink(path, target)?,
                Entry::CharDevice { major, minor } => {
                    writer.char_device(path, 0o600, *major, *minor)?
                }
            }
        }
        Ok(writer.finish()?)
    }

    /// Writes the gzip-compressed image to `out` (the format `-initrd` and the kernel accept).
    pub fn write(&self, out: &Path) -> Result<()> {
        if !self.entries.contains_key("init") {
            bail!("initramfs has no /init: call init() first");
        }
        let cpio = self.to_cpio()?;
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        // Fast compression: the image is made per test and read once by the kernel.
        let mut encoder = GzEncoder::new(file, Compression::fast());
        encoder.write_all(&cpio)?;
        encoder.finish()?.sync_all()?;
        Ok(())
    }
}

fn validate_guest_path(path: &str) -> Result<&str> {
    let relative = path
        .strip_prefix('/')
        .with_context(|| format!("initramfs path '{path}' must be absolute"))?;
    if relative.is_empty()
        || relative
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("initramfs path '{path}' must be normalised (no empty, '.' or '..' components)");
    }
    Ok(relative)
}

/// How [`StandardInit`] configures eth0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// No network setup.
    None,
    /// 10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3: qemu user networking's fixed plan.
    #[default]
    Static,
    /// busybox udhcpc with a tiny lease script.
    Dhcp,
}

/// Generates a standard `/init` script.
#[derive(Clone, Debug, Default)]
pub struct StandardInit {
    modules: Vec<String>,
    network: Network,
    commands: Vec<String>,
    switch_root: Option<String>,
}

impl StandardInit {
    pub fn new() -> StandardInit {
        StandardInit::default()
    }

    /// Guest module paths to insmod, in order (as returned by [`Initramfs::kernel_modules`]).
    pub fn modules(mut self, guest_paths: impl IntoIterator<Item = String>) -> Self {
        self.modules.extend(guest_paths);
        self
    }

    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// A shell command line run after setup (all commands run in one subshell, in order).
    pub fn command(mut self, command: impl Into<String>) -> Self {
        self.commands.push(command.into());
        self
    }

    /// Instead of network and commands: mount `device` (ext4) and `switch_root` into its
    /// `/sbin/init` (host-mode nodes booting a real Debian root; see [`crate::rootfs`]).
    pub fn switch_root(mut self, device: impl Into<String>) -> Self {
        self.switch_root = Some(device.into());
        self
    }

    pub fn render(&self) -> String {
        let mut script = String::from(
            "#!/bin/sh\n\
             # Generated by testkit::StandardInit.\n\
             /bin/busybox --install -s\n\
             export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sysfs /sys\n\
             mount -t devtmpfs devtmpfs /dev 2>/dev/null\n",
        );
        script.push_str(&format!("echo \"{INIT_MARKER} $(uname -r) $(uname -m)\"\n"));
        for module in &self.modules {
            let quoted = shell_quote(module);
            script.push_str(&format!(
                "insmod {quoted} || echo \"{INSMOD_FAILED_MARKER} \"{quoted}\n"
            ));
        }
        if let Some(device) = &self.switch_root {
            let device = shell_quote(device);
            script.push_str(&format!(
                "mkdir -p /newroot\n\
                 if mount -t ext4 -o rw {device} /newroot; then\n\
                 \tumount /proc /sys\n\
                 \tmount --move /dev /newroot/dev\n\
                 \texec switch_root /newroot /sbin/init\n\
                 fi\n\
                 echo \"{SWITCH_ROOT_FAILED_MARKER} \"{device}\n\
                 poweroff -f\n"
            ));
            return script;
        }
        script.push_str("ip link set lo up\n");
        match self.network {
            Network::None => {}
            Network::Static => script.push_str(
                "ip link set eth0 up\n\
                 ip addr add 10.0.2.15/24 dev eth0\n\
                 ip route add default via 10.0.2.2\n\
                 echo 'nameserver 10.0.2.3' > /etc/resolv.conf\n",
            ),
            Network::Dhcp => script.push_str(
                "cat > /etc/udhcpc.script <<'EOF'\n\
                 #!/bin/sh\n\
                 case \"$1\" in\n\
                 bound|renew)\n\
                 \tip addr flush dev \"$interface\"\n\
                 \tip addr add \"$ip/${mask:-24}\" dev \"$interface\"\n\
                 \tfor r in $router; do ip route add default via \"$r\" dev \"$interface\"; break; done\n\
                 \tfor d in $dns; do echo \"nameserver $d\"; done > /etc/resolv.conf\n\
                 \t;;\n\
                 esac\n\
                 EOF\n\
                 chmod 755 /etc/udhcpc.script\n\
                 ip link set eth0 up\n\
                 udhcpc -i eth0 -n -q -t 5 -s /etc/udhcpc.script\n",
            ),
        }
        script.push_str("(\n");
        for command in &self.commands {
            script.push_str(command);
            script.push('\n');
        }
        script.push_str(":\n)\n");
        script.push_str(&format!(
            "echo \"{END_MARKER} rc=$?\"\n\
             sync\n\
             poweroff -f\n"
        ));
        script
    }
}

/// Single-quotes `value` for sh.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// A statically linked busybox for `arch`: the host's `/bin/busybox` when it is static and of the
/// same architecture (Debian's busybox-static), else busybox-static:<arch> from Debian, unpacked
/// once into the cache.
pub fn static_busybox(arch: Arch) -> Result<PathBuf> {
    let host_matches = match std::env::consts::ARCH {
        "x86_64" => arch.debian_name() == "amd64",
        "aarch64" => arch.debian_name() == "arm64",
        _ => false,
    };
    if host_matches {
        let host = Path::new("/bin/busybox");
        if let Ok(bytes) = fs::read(host)
            && is_static_elf(&bytes)
        {
            return Ok(host.to_path_buf());
        }
    }
    let dir = cache_dir().join("busybox").join(arch.debian_name());
    let binary = dir.join("busybox");
    let _lock = CacheLock::acquire(&dir.with_extension("lock"))?;
    if binary.is_file() {
        return Ok(binary);
    }
    let deb = download_deb(&format!("busybox-static:{}", arch.debian_name()), None)?;
    let scratch = scratch_path(&dir, "unpack");
    let result = (|| {
        let output = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&scratch)
            .output()
            .context("running dpkg-deb")?;
        if !output.status.success() {
            bail!(
                "dpkg-deb -x {} failed: {}",
                deb.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let unpacked = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| scratch.join(p))
            .find(|p| p.is_file())
            .context("busybox-static package has no busybox binary")?;
        if !is_static_elf(&fs::read(&unpacked)?) {
            bail!("{} is not a static ELF binary", unpacked.display());
        }
        fs::create_dir_all(&dir)?;
        let staged = scratch_path(&binary, "tmp");
        fs::copy(&unpacked, &staged)?;
        fs::rename(&staged, &binary)?;
        Ok(binary.clone())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// True for a 64-bit little-endian ELF without a PT_INTERP program header (no dynamic loader).
pub(crate) fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let read_u16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let read_u32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let read_u64 = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (read_u64(0x20), read_u16(0x36), read_u16(0x38))
    else {
        return false;
    };
    for index in 0..usize::from(phnum) {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + index * usize::from(phentsize);
        match read_u32(at) {
            Some(PT_INTERP) => return false,
            Some(_) => {}
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_init_runs_steps_in_order() {
        let script = StandardInit::new()
            .modules([
                "/lib/modules/r/a.ko".to_owned(),
                "/lib/modules/r/b.ko".to_owned(),
            ])
            .command("echo hello")
            .render();
        let position = |needle: &str| {
            script
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing"))
        };
        assert!(position("mount -t proc") < position(INIT_MARKER));
        assert!(position(INIT_MARKER) < position("insmod '/lib/modules/r/a.ko'"));
        assert!(
            position("insmod '/lib/modules/r/a.ko'") < position("insmod '/lib/modules/r/b.ko'")
        );
        assert!(position("insmod '/lib/modules/r/b.ko'") < position("10.0.2.15/24"));
        assert!(position("10.0.2.15/24") < position("echo hello"));
        assert!(position("echo hello") < position(END_MARKER));
        assert!(position(END_MARKER) < position("poweroff -f"));
    }

    #[test]
    fn guest_paths_must_be_absolute_and_normalised() {
        assert!(validate_guest_path("/bin/x").is_ok());
        assert!(validate_guest_path("bin/x").is_err());
        assert!(validate_guest_path("/bin/../etc").is_err());
        assert!(validate_guest_path("/bin//x").is_err());
        assert!(validate_guest_path("/").is_err());
    }

    #[test]
    fn shell_quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn host_busybox_static_check() {
        // /bin/busybox from busybox-static is static; /bin/ls is dynamically linked.
        if let Ok(ls) = fs::read("/bin/ls") {
            assert!(!is_static_elf(&ls));
        }
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
