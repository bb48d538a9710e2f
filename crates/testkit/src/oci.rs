//! Container images without Docker or a registry: [`FinalStage`] reads the last stage of a Dockerfile
//! that starts `FROM scratch` (only `COPY --from=<stage>`, `ENTRYPOINT` and `CMD` in exec form are
//! understood; anything else is an error, so a Dockerfile change the test cannot honour fails loudly),
//! and [`ScratchImage`] writes such an image as an OCI image archive (one uncompressed layer with
//! deterministic tar entries, the image config, the manifest and the index, every blob addressed by its
//! SHA-256) that `podman load` and `skopeo` accept.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kernel_id::Arch;
use sha2::{Digest, Sha256};

/// One instruction of a final `FROM scratch` stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `COPY --from=<stage> <source> <destination>`.
    CopyFrom {
        stage: String,
        source: String,
        destination: String,
    },
    Entrypoint(Vec<String>),
    Cmd(Vec<String>),
}

/// The last stage of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStage {
    pub instructions: Vec<Instruction>,
}

impl FinalStage {
    /// Parses the last stage of `dockerfile`, which must be `FROM scratch`.
    pub fn parse(dockerfile: &str) -> Result<FinalStage> {
        // Comments go first, then continuation lines are joined into one instruction each.
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in dockerfile.lines() {
            let trimmed = line.trim();
            if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            if trimmed.starts_with('#') {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    current.push_str(head);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        if !current.is_empty() {
            bail!("the Dockerfile ends inside a continued line");
        }
        let start = logical
            .iter()
            .rposition(|line| keyword(line).0 == "FROM")
            .context("the Dockerfile has no FROM")?;
        let (_, base) = keyword(&logical[start]);
        if base.trim() != "scratch" {
            bail!("the final stage is FROM {base}, not FROM scratch");
        }
        let mut instructions = Vec::new();
        for line in &logical[start + 1..] {
            let (word, rest) = keyword(line);
            instructions.push(match word.as_str() {
                "COPY" => {
                    let words: Vec<&str> = rest.split_whitespace().collect();
                    match words.as_slice() {
                        [from, source, destination] => Instruction::CopyFrom {
                            stage: from
                                .strip_prefix("--from=")
                                .with_context(|| {
                                    format!("{line}: only COPY --from=<stage> SRC DEST")
                                })?
                                .to_owned(),
                            source: (*source).to_owned(),
                            destination: (*destination).to_owned(),
                        },
                        _ => bail!("{line}: only COPY --from=<stage> SRC DEST"),
                    }
                }
                "ENTRYPOINT" => Instruction::Entrypoint(exec_form(line, rest)?),
                "CMD" => Instruction::Cmd(exec_form(line, rest)?),
                other => bail!("{line}: {other} in the final stage is not understood"),
            });
        }
        Ok(FinalStage { instructions })
    }

    pub fn entrypoint(&self) -> Option<&[String]> {
        self.instructions.iter().rev().find_map(|i| match i {
            Instruction::Entrypoint(words) => Some(words.as_slice()),
            _ => None,
        })
    }

    pub fn cmd(&self) -> Option<&[String]> {
        self.instructions.iter().rev().find_map(|i| match i {
            Instruction::Cmd(words) => Some(words.as_slice()),
            _ => None,
        })
    }
}

fn keyword(line: &str) -> (String, &str) {
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    (word.to_ascii_uppercase(), rest.trim())
}

fn exec_form(line: &str, rest: &str) -> Result<Vec<String>> {
    serde_json::from_str(rest).with_context(|| format!("{line}: only the exec (JSON array) form"))
}

#[derive(Clone, Debug)]
enum Entry {
    Directory { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
}

/// A single-layer image on an empty base.
#[derive(Clone, Debug)]
pub struct ScratchImage {
    arch: Arch,
    entries: BTreeMap<String, Entry>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
}

/// What [`ScratchImage::write_oci_archive`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenImage {
    /// `sha256:<hex>` of the image config: the image ID podman reports.
    pub config_digest: String,
    pub manifest_digest: String,
    pub layer_digest: String,
}

impl WrittenImage {
    /// The image ID as podman prints it (the config digest's hex).
    pub fn id(&self) -> &str {
        self.config_digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.config_digest)
    }
}

impl ScratchImage {
    pub fn new(arch: Arch) -> ScratchImage {
        ScratchImage {
            arch,
            entries: BTreeMap::new(),
            entrypoint: None,
            cmd: None,
        }
    }

    /// Applies `stage`; `resolve(stage, source)` names the host file or directory a `COPY --from`
    /// source stands for (the output of the build stage the test made itself).
    pub fn from_final_stage(
        arch: Arch,
        stage: &FinalStage,
        resolve: impl Fn(&str, &str) -> Result<PathBuf>,
    ) -> Result<ScratchImage> {
        let mut image = ScratchImage::new(arch);
        for instruction in &stage.instructions {
            match instruction {
                Instruction::CopyFrom {
                    stage,
                    source,
                    destination,
                } => {
                    let host = resolve(stage, source)?;
                    image.copy(&host, destination)?;
                }
                Instruction::Entrypoint(words) => image.entrypoint = Some(words.clone()),
                Instruction::Cmd(words) => image.cmd = Some(words.clone()),
            }
        }
        Ok(image)
    }

    /// `COPY` semantics: a file lands at `destination` (or inside it when it ends with `/`), a
    /// directory's contents are copied into `destination`; modes are kept, owners are root.
    pub fn copy(&mut self, host: &Path, destination: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        if meta.is_dir() {
            self.directory(
                destination.trim_end_matches('/'),
                meta.permissions().mode() & 0o7777,
            )?;
            let mut children: Vec<_> = fs::read_dir(host)?.collect::<std::io::Result<_>>()?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let name = name.to_str().context("non-UTF-8 file name")?;
                self.copy(
                    &child.path(),
                    &format!("{}/{name}", destination.trim_end_matches('/')),
                )?;
            }
            Ok(())
        } else {
            let target = if destination.ends_with('/') {
                let name = host
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("file name")?;
                format!("{destination}{name}")
            } else {
                destination.to_owned()
            };
            let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
            self.file(&target, &data, meta.permissions().mode() & 0o7777)
        }
    }

    pub fn directory(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let relative = self.parents(path)?;
        self.entries.insert(relative, Entry::Directory { mode });
        Ok(self)
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let relative = self.parents(path)?;
        self.entries.insert(
            relative,
            Entry::File {
                data: data.to_vec(),
                mode,
            },
        );
        Ok(())
    }

    pub fn entrypoint(&self) -> Option<&[String]> {
        self.entrypoint.as_deref()
    }

    pub fn cmd(&self) -> Option<&[String]> {
        self.cmd.as_deref()
    }

    /// Validates `path` and creates its missing parents (0755, as COPY does); returns it relative.
    fn parents(&mut self, path: &str) -> Result<String> {
        let relative = path
            .strip_prefix('/')
            .with_context(|| format!("image path {path:?} must be absolute"))?;
        let parts: Vec<&str> = relative.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            bail!("image path {path:?} must be normalised");
        }
        for end in 1..parts.len() {
            let parent = parts[..end].join("/");
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent, Entry::Directory { mode: 0o755 });
                }
                Some(Entry::Directory { .. }) => {}
                Some(Entry::File { .. }) => bail!("image path {path:?}: /{parent} is a file"),
            }
        }
        Ok(relative.to_owned())
    }

    /// The layer: a tar with every entry owned by root, mtime 0, in path order.
    pub fn layer(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Directory { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    header.set_cksum();
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    header.set_cksum();
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }

    /// Writes an OCI image archive (an image layout in a tar) to `out`, tagged `reference` through the
    /// index's `org.opencontainers.image.ref.name` annotation.
    pub fn write_oci_archive(&self, out: &Path, reference: &str) -> Result<WrittenImage> {
        let layer = self.layer()?;
        let layer_digest = digest(&layer);
        let mut config_fields = serde_json::Map::new();
        if let Some(entrypoint) = &self.entrypoint {
            config_fields.insert("Entrypoint".into(), serde_json::json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            config_fields.insert("Cmd".into(), serde_json::json!(cmd));
        }
        let config = serde_json::to_vec(&serde_json::json!({
            "created": "1970-01-01T00:00:00Z",
            "architecture": self.arch.debian_name(),
            "os": "linux",
            "config": config_fields,
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "testkit::oci::ScratchImage"}],
        }))?;
        let config_digest = digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        }))?;
        let manifest_digest = digest(&manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": reference},
            }],
        }))?;

        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        let mut add = |path: &str, data: &[u8]| -> Result<()> {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            archive.append_data(&mut header, path, data)?;
            Ok(())
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        for (blob_digest, data) in [
            (&manifest_digest, &manifest),
            (&config_digest, &config),
            (&layer_digest, &layer),
        ] {
            let hex = blob_digest.trim_start_matches("sha256:");
            add(&format!("blobs/sha256/{hex}"), data)?;
        }
        archive.into_inner()?.flush()?;
        Ok(WrittenImage {
            config_digest,
            manifest_digest,
            layer_digest,
        })
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str = r#"# comment
FROM rust:1 AS build
RUN echo a \
    && echo b
FROM scratch
COPY --from=build /out/bin /usr/local/bin/tool
# a comment between instructions
COPY --from=build /out/keys /etc/tool/keys
ENTRYPOINT ["/usr/local/bin/tool"]
CMD ["run", \
     "--flag"]
"#;

    #[test]
    fn the_final_stage_is_read_and_anything_else_refused() {
        let stage = FinalStage::parse(DOCKERFILE).expect("parse");
        assert_eq!(
            stage.instructions[0],
            Instruction::CopyFrom {
                stage: "build".into(),
                source: "/out/bin".into(),
                destination: "/usr/local/bin/tool".into()
            }
        );
        assert_eq!(
            stage.entrypoint(),
            Some(&["/usr/local/bin/tool".to_owned()][..])
        );
        assert_eq!(
            stage.cmd(),
            Some(&["run".to_owned(), "--flag".to_owned()][..])
        );
        for bad in [
            DOCKERFILE.replace("FROM scratch", "FROM debian:12"),
            DOCKERFILE.replace("CMD [\"run\", \\", "USER 1000\nCMD [\"run\", \\"),
            DOCKERFILE.replace(
                "ENTRYPOINT [\"/usr/local/bin/tool\"]",
                "ENTRYPOINT /usr/local/bin/tool",
            ),
            DOCKERFILE.replace("COPY --from=build /out/bin", "COPY /out/bin"),
        ] {
            assert!(FinalStage::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_archive_addresses_every_blob_by_its_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("bin"), b"\x7fELF").expect("write");
        fs::create_dir(dir.path().join("keys")).expect("mkdir");
        let stage = FinalStage::parse(DOCKERFILE).expect("parse");
        let image = ScratchImage::from_final_stage(Arch::X86_64, &stage, |from, source| {
            assert_eq!(from, "build");
            Ok(dir.path().join(source.trim_start_matches("/out/")))
        })
        .expect("image");
        let out = dir.path().join("image.tar");
        let written = image
            .write_oci_archive(&out, "localhost/tool:test")
            .expect("write");
        let mut archive = tar::Archive::new(fs::File::open(&out).expect("open"));
        let mut blobs = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).expect("read");
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(&data), format!("sha256:{hex}"));
            }
            blobs.insert(path, data);
        }
        let config: serde_json::Value =
            serde_json::from_slice(&blobs[&format!("blobs/sha256/{}", written.id())])
                .expect("config");
        assert_eq!(config["config"]["Entrypoint"][0], "/usr/local/bin/tool");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            written.layer_digest.as_str()
        );
        let layer = &blobs[&format!(
            "blobs/sha256/{}",
            written.layer_digest.trim_start_matches("sha256:")
        )];
        let mut names = Vec::new();
        for entry in tar::Archive::new(layer.as_slice())
            .entries()
            .expect("layer")
        {
            let entry = entry.expect("entry");
            names.push((
                entry.path().expect("path").to_string_lossy().into_owned(),
                entry.header().mode().expect("mode"),
            ));
        }
        assert_eq!(
            names,
            [
                ("etc/".to_owned(), 0o755),
                ("etc/tool/".to_owned(), 0o755),
                ("etc/tool/keys/".to_owned(), 0o755),
                ("usr/".to_owned(), 0o755),
                ("usr/local/".to_owned(), 0o755),
                ("usr/local/bin/".to_owned(), 0o755),
                ("usr/local/bin/tool".to_owned(), 0o644),
            ]
        );
        let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).expect("index");
        assert_eq!(
            index["manifests"][0]["digest"],
            written.manifest_digest.as_str()
        );
    }
}
