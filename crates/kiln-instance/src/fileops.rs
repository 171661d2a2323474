//! AWSTOE's file actions as whole operations, and the one implementation of them.
//!
//! [`apply`] runs against the filesystem of the process that calls it: the host instance calls
//! it directly; a sandbox calls it inside its mount namespace after `pivot_root`; a VM runs it
//! in its guest agent. Owner and group names resolve through the instance's own `/etc/passwd`
//! and `/etc/group`, never the host's.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::encoding::{Encoding, ENCODING_NAMES};
use crate::InstanceError;

/// One file operation, as an AWSTOE action describes it (one item of its `inputs` list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum FileOp {
    /// AppendFile: add content to an existing file.
    Append {
        /// File.
        path: String,
        /// Text to add.
        content: String,
        /// How to encode it.
        encoding: Encoding,
    },
    /// CopyFile / MoveFile: `source` may end in a `*` pattern; a `destination` ending in `/`
    /// is a folder that receives the source file name.
    CopyFile {
        /// Source file or pattern.
        source: String,
        /// Destination file or folder.
        destination: String,
        /// Replace existing files.
        overwrite: bool,
        /// Move instead of copy.
        remove_source: bool,
    },
    /// CopyFolder / MoveFolder, with the same rules for folders.
    CopyFolder {
        /// Source folder or pattern.
        source: String,
        /// Destination folder.
        destination: String,
        /// Merge into (copy) or replace (move) an existing destination.
        overwrite: bool,
        /// Move instead of copy.
        remove_source: bool,
    },
    /// CreateFile.
    CreateFile {
        /// File.
        path: String,
        /// Content (empty when `None`).
        content: Option<String>,
        /// Encoding of the content.
        encoding: Encoding,
        /// Owner (name or id).
        owner: Option<String>,
        /// Group (name or id).
        group: Option<String>,
        /// Mode bits; the umask decides when `None`.
        permissions: Option<u32>,
        /// Replace an existing file.
        overwrite: bool,
    },
    /// CreateFolder.
    CreateFolder {
        /// Folder.
        path: String,
        /// Owner (name or id).
        owner: Option<String>,
        /// Group (name or id).
        group: Option<String>,
        /// Mode bits; the umask decides when `None`.
        permissions: Option<u32>,
        /// Accept an existing folder.
        overwrite: bool,
    },
    /// CreateSymlink.
    CreateSymlink {
        /// The link to create.
        path: String,
        /// What it points to (must exist).
        target: String,
        /// Replace an existing link.
        force: bool,
    },
    /// DeleteFile: a file, or the files matching a `*` pattern in the last path component.
    DeleteFile {
        /// File or pattern.
        path: String,
    },
    /// DeleteFolder.
    DeleteFolder {
        /// Folder.
        path: String,
        /// Remove a non-empty folder with its content.
        force: bool,
    },
    /// ListFiles.
    ListFiles {
        /// Folder.
        path: String,
        /// `*` pattern file names must match.
        pattern: Option<String>,
        /// Descend into subfolders.
        recursive: bool,
        /// Give paths relative to `path` instead of absolute ones.
        relative: bool,
    },
    /// ReadFile.
    ReadFile {
        /// File (symbolic links are followed).
        path: String,
        /// How it is encoded.
        encoding: Encoding,
    },
    /// SetFileEncoding: re-encode a UTF-8 file.
    SetFileEncoding {
        /// File.
        path: String,
        /// Target encoding.
        encoding: Encoding,
    },
    /// SetFileOwner / SetFolderOwner.
    SetOwner {
        /// File or folder.
        path: String,
        /// User name or id.
        owner: String,
        /// Group name or id; the user's primary group when `None`.
        group: Option<String>,
        /// Apply to the folder's content too.
        recursive: bool,
        /// The path must be a folder (SetFolderOwner) rather than a file.
        folder: bool,
    },
    /// SetFilePermissions / SetFolderPermissions.
    SetPermissions {
        /// File or folder.
        path: String,
        /// Mode bits.
        permissions: u32,
        /// Apply to the folder's content too.
        recursive: bool,
        /// The path must be a folder rather than a file.
        folder: bool,
    },
    /// What is at a path (for `fileExists` / `folderExists`).
    Stat {
        /// The path.
        path: String,
    },
    /// Hex digest of a file (for `fileSHA256Equals` and friends).
    Hash {
        /// The file.
        path: String,
        /// `md5`, `sha1`, `sha256` or `sha512`.
        algorithm: HashAlgorithm,
    },
    /// Writes bytes to a file (kiln's own use: step scripts).
    Write {
        /// The file.
        path: String,
        /// Its content.
        content: Vec<u8>,
        /// Its mode.
        mode: u32,
    },
}

/// Digest algorithms of the file-hash comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// MD5.
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

/// What is at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Nothing.
    Missing,
    /// A regular file (or a link to one).
    File,
    /// A folder (or a link to one).
    Folder,
    /// Something else (device, socket, dangling link).
    Other,
}

/// The result of a file operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum FileOpOutput {
    /// Nothing to report.
    None,
    /// Text (ReadFile content, a digest).
    Text(String),
    /// Paths (ListFiles).
    Paths(Vec<String>),
    /// What a path is.
    Kind(PathKind),
}

fn op_err(msg: impl Into<String>) -> InstanceError {
    InstanceError::Op(msg.into())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> InstanceError {
    let reason = match e.kind() {
        ErrorKind::NotFound => "it does not exist".to_string(),
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    op_err(format!("cannot {what} {}: {reason}", path.display()))
}

/// Resolves a path of the document against the working directory.
pub fn resolve(cwd: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

fn ends_with_sep(s: &str) -> bool {
    s.ends_with('/')
}

/// Performs a file operation; relative paths resolve against `cwd`.
pub fn apply(op: &FileOp, cwd: &Path) -> Result<FileOpOutput, InstanceError> {
    match op {
        FileOp::Append {
            path,
            content,
            encoding,
        } => {
            let p = resolve(cwd, path);
            let meta = fs::metadata(&p).map_err(|e| io_err("append to", &p, e))?;
            if !meta.is_file() {
                return Err(op_err(format!(
                    "cannot append to {}: not a file",
                    p.display()
                )));
            }
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .map_err(|e| io_err("append to", &p, e))?;
            f.write_all(&encoding.encode(content, meta.len() == 0))
                .map_err(|e| io_err("append to", &p, e))?;
            Ok(FileOpOutput::None)
        }
        FileOp::CopyFile {
            source,
            destination,
            overwrite,
            remove_source,
        } => copy_files(cwd, source, destination, *overwrite, *remove_source),
        FileOp::CopyFolder {
            source,
            destination,
            overwrite,
            remove_source,
        } => copy_folders(cwd, source, destination, *overwrite, *remove_source),
        FileOp::CreateFile {
            path,
            content,
            encoding,
            owner,
            group,
            permissions,
            overwrite,
        } => {
            let p = resolve(cwd, path);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {
                    return Err(op_err(format!(
                        "cannot create file {}: a folder of that name exists",
                        p.display()
                    )))
                }
                Ok(_) if !overwrite => {
                    return Err(op_err(format!(
                        "cannot create file {}: it exists and overwrite is false",
                        p.display()
                    )))
                }
                _ => {}
            }
            make_parents(&p)?;
            let bytes = encoding.encode(content.as_deref().unwrap_or(""), true);
            fs::write(&p, bytes).map_err(|e| io_err("write", &p, e))?;
            finish_props(&p, owner.as_deref(), group.as_deref(), *permissions)?;
            Ok(FileOpOutput::None)
        }
        FileOp::CreateFolder {
            path,
            owner,
            group,
            permissions,
            overwrite,
        } => {
            let p = resolve(cwd, path);
            match fs::metadata(&p) {
                Ok(m) if !m.is_dir() => {
                    return Err(op_err(format!(
                        "cannot create folder {}: a file of that name exists",
                        p.display()
                    )))
                }
                Ok(_) if !overwrite => {
                    return Err(op_err(format!(
                        "cannot create folder {}: it exists and overwrite is false",
                        p.display()
                    )))
                }
                Ok(_) => {}
                Err(_) => fs::create_dir_all(&p).map_err(|e| io_err("create folder", &p, e))?,
            }
            finish_props(&p, owner.as_deref(), group.as_deref(), *permissions)?;
            Ok(FileOpOutput::None)
        }
        FileOp::CreateSymlink {
            path,
            target,
            force,
        } => {
            let link = resolve(cwd, path);
            let target_path = resolve(link.parent().unwrap_or(cwd), target);
            if fs::metadata(&target_path).is_err() {
                return Err(op_err(format!(
                    "cannot link {} to {target}: the target does not exist",
                    link.display()
                )));
            }
            match fs::symlink_metadata(&link) {
                Ok(m) if m.file_type().is_symlink() => {
                    if !force {
                        return Err(op_err(format!(
                            "cannot create link {}: a link of that name exists (set force: true \
                             to replace it)",
                            link.display()
                        )));
                    }
                    fs::remove_file(&link).map_err(|e| io_err("replace link", &link, e))?;
                }
                Ok(_) => {
                    return Err(op_err(format!(
                        "cannot create link {}: a file or folder that is not a link exists there",
                        link.display()
                    )))
                }
                Err(_) => {}
            }
            make_parents(&link)?;
            std::os::unix::fs::symlink(target, &link)
                .map_err(|e| io_err("create link", &link, e))?;
            Ok(FileOpOutput::None)
        }
        FileOp::DeleteFile { path } => {
            for p in expand(cwd, path, |m| !m.is_dir())? {
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {
                        return Err(op_err(format!(
                            "cannot delete {}: it is a folder (use DeleteFolder)",
                            p.display()
                        )))
                    }
                    Ok(_) => fs::remove_file(&p).map_err(|e| io_err("delete", &p, e))?,
                    Err(_) => {}
                }
            }
            Ok(FileOpOutput::None)
        }
        FileOp::DeleteFolder { path, force } => {
            let p = resolve(cwd, path);
            match fs::symlink_metadata(&p) {
                Err(_) => Ok(FileOpOutput::None),
                Ok(m) if !m.is_dir() => Err(op_err(format!(
                    "cannot delete folder {}: it is not a folder (use DeleteFile)",
                    p.display()
                ))),
                Ok(_) => {
                    let empty = fs::read_dir(&p)
                        .map_err(|e| io_err("read folder", &p, e))?
                        .next()
                        .is_none();
                    if !empty && !force {
                        return Err(op_err(format!(
                            "cannot delete folder {}: it is not empty (set force: true to delete \
                             it with its content)",
                            p.display()
                        )));
                    }
                    fs::remove_dir_all(&p).map_err(|e| io_err("delete folder", &p, e))?;
                    Ok(FileOpOutput::None)
                }
            }
        }
        FileOp::ListFiles {
            path,
            pattern,
            recursive,
            relative,
        } => {
            let p = resolve(cwd, path);
            let m = fs::metadata(&p).map_err(|e| io_err("list", &p, e))?;
            if !m.is_dir() {
                return Err(op_err(format!("cannot list {}: not a folder", p.display())));
            }
            let pat = pattern.as_deref().map(star_pattern).transpose()?;
            let mut out = Vec::new();
            list_files(&p, pat.as_ref(), *recursive, &mut out)?;
            if *relative {
                let base = format!("{}/", p.to_string_lossy().trim_end_matches('/'));
                for f in &mut out {
                    if let Some(rel) = f.strip_prefix(&base) {
                        *f = rel.to_string();
                    }
                }
            }
            out.sort();
            Ok(FileOpOutput::Paths(out))
        }
        FileOp::ReadFile { path, encoding } => {
            let p = resolve(cwd, path);
            let bytes = fs::read(&p).map_err(|e| io_err("read", &p, e))?;
            Ok(FileOpOutput::Text(encoding.decode(&bytes)))
        }
        FileOp::SetFileEncoding { path, encoding } => {
            let p = resolve(cwd, path);
            let bytes = fs::read(&p).map_err(|e| io_err("read", &p, e))?;
            let text = Encoding::Utf8.decode(&bytes);
            atomic_write(&p, &encoding.encode(&text, true))?;
            Ok(FileOpOutput::None)
        }
        FileOp::SetOwner {
            path,
            owner,
            group,
            recursive,
            folder,
        } => {
            let p = resolve(cwd, path);
            check_kind(&p, *folder)?;
            let (uid, gid) = resolve_owner(Path::new("/"), owner, group.as_deref())?;
            chown(&p, uid, Some(gid), true)?;
            if *recursive && *folder {
                walk(&p, &mut |entry| chown(entry, uid, Some(gid), false))?;
            }
            Ok(FileOpOutput::None)
        }
        FileOp::SetPermissions {
            path,
            permissions,
            recursive,
            folder,
        } => {
            let p = resolve(cwd, path);
            check_kind(&p, *folder)?;
            chmod(&p, *permissions)?;
            if *recursive && *folder {
                walk(&p, &mut |entry| {
                    let is_link = fs::symlink_metadata(entry)
                        .map(|m| m.file_type().is_symlink())
                        .unwrap_or(true);
                    if is_link {
                        Ok(())
                    } else {
                        chmod(entry, *permissions)
                    }
                })?;
            }
            Ok(FileOpOutput::None)
        }
        FileOp::Stat { path } => {
            let p = resolve(cwd, path);
            Ok(FileOpOutput::Kind(match fs::metadata(&p) {
                Ok(m) if m.is_file() => PathKind::File,
                Ok(m) if m.is_dir() => PathKind::Folder,
                Ok(_) => PathKind::Other,
                Err(_) if fs::symlink_metadata(&p).is_ok() => PathKind::Other,
                Err(_) => PathKind::Missing,
            }))
        }
        FileOp::Hash { path, algorithm } => {
            let p = resolve(cwd, path);
            let bytes = fs::read(&p).map_err(|e| io_err("read", &p, e))?;
            Ok(FileOpOutput::Text(hash_hex(*algorithm, &bytes)))
        }
        FileOp::Write {
            path,
            content,
            mode,
        } => {
            let p = resolve(cwd, path);
            make_parents(&p)?;
            atomic_write(&p, content)?;
            chmod(&p, *mode)?;
            Ok(FileOpOutput::None)
        }
    }
}

/// Hex digest of bytes.
pub fn hash_hex(algorithm: HashAlgorithm, bytes: &[u8]) -> String {
    use sha2::Digest;
    match algorithm {
        HashAlgorithm::Md5 => hex(&md5::Md5::digest(bytes)),
        HashAlgorithm::Sha1 => hex(&sha1::Sha1::digest(bytes)),
        HashAlgorithm::Sha256 => hex(&sha2::Sha256::digest(bytes)),
        HashAlgorithm::Sha512 => hex(&sha2::Sha512::digest(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_kind(p: &Path, folder: bool) -> Result<(), InstanceError> {
    let m = fs::metadata(p).map_err(|e| io_err("change", p, e))?;
    match (folder, m.is_dir()) {
        (true, false) => Err(op_err(format!(
            "{} is not a folder (use the File variant of this action)",
            p.display()
        ))),
        (false, true) => Err(op_err(format!(
            "{} is a folder (use the Folder variant of this action)",
            p.display()
        ))),
        _ => Ok(()),
    }
}

fn make_parents(p: &Path) -> Result<(), InstanceError> {
    if let Some(parent) = p.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(|e| io_err("create folder", parent, e))?;
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so that a reader never sees half a file.
fn atomic_write(p: &Path, bytes: &[u8]) -> Result<(), InstanceError> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = p.with_file_name(format!(".{name}.kiln-tmp"));
    let mode = fs::metadata(p).ok().map(|m| m.permissions());
    fs::write(&tmp, bytes).map_err(|e| io_err("write", &tmp, e))?;
    if let Some(mode) = mode {
        let _ = fs::set_permissions(&tmp, mode);
    }
    fs::rename(&tmp, p).map_err(|e| io_err("replace", p, e))
}

fn chmod(p: &Path, mode: u32) -> Result<(), InstanceError> {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("set permissions of", p, e))
}

fn chown(p: &Path, uid: u32, gid: Option<u32>, follow: bool) -> Result<(), InstanceError> {
    let r = if follow {
        std::os::unix::fs::chown(p, Some(uid), gid)
    } else {
        std::os::unix::fs::lchown(p, Some(uid), gid)
    };
    r.map_err(|e| io_err("change owner of", p, e))
}

fn finish_props(
    p: &Path,
    owner: Option<&str>,
    group: Option<&str>,
    permissions: Option<u32>,
) -> Result<(), InstanceError> {
    match (owner, group) {
        (Some(o), g) => {
            let (uid, gid) = resolve_owner(Path::new("/"), o, g)?;
            chown(p, uid, Some(gid), true)?;
        }
        (None, Some(g)) => {
            let gid = resolve_group(Path::new("/"), g)?;
            std::os::unix::fs::chown(p, None, Some(gid))
                .map_err(|e| io_err("change group of", p, e))?;
        }
        (None, None) => {}
    }
    if let Some(mode) = permissions {
        chmod(p, mode)?;
    }
    Ok(())
}

/// Finds a user's uid and primary gid, and a group's gid, in the password and group files under
/// `root`. Numeric ids are accepted as they are.
pub fn resolve_owner(
    root: &Path,
    owner: &str,
    group: Option<&str>,
) -> Result<(u32, u32), InstanceError> {
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let user = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && (f[0] == owner || f[2] == owner))
            .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            .flatten()
    });
    let (uid, primary_gid) = match (user, owner.parse::<u32>()) {
        (Some(u), _) => u,
        (None, Ok(id)) => (id, id),
        (None, Err(_)) => {
            return Err(op_err(format!(
                "user `{owner}` does not exist in this instance (not in /etc/passwd)"
            )))
        }
    };
    let gid = match group {
        Some(g) => resolve_group(root, g)?,
        None => primary_gid,
    };
    Ok((uid, gid))
}

fn resolve_group(root: &Path, group: &str) -> Result<u32, InstanceError> {
    let groups = fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    let found = groups.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == group)
            .then(|| f[2].parse::<u32>().ok())
            .flatten()
    });
    match (found, group.parse::<u32>()) {
        (Some(g), _) | (None, Ok(g)) => Ok(g),
        (None, Err(_)) => Err(op_err(format!(
            "group `{group}` does not exist in this instance (not in /etc/group)"
        ))),
    }
}

/// A pattern where only `*` is special (AWSTOE wildcards), as a glob pattern.
fn star_pattern(s: &str) -> Result<glob::Pattern, InstanceError> {
    let escaped = s
        .split('*')
        .map(glob::Pattern::escape)
        .collect::<Vec<_>>()
        .join("*");
    glob::Pattern::new(&escaped).map_err(|e| op_err(format!("bad pattern `{s}`: {e}")))
}

/// The paths a source names: itself, or, when its last component holds `*`, the entries of its
/// folder that match and satisfy `keep` (sorted, so results are reproducible).
fn expand(
    cwd: &Path,
    source: &str,
    keep: impl Fn(&fs::Metadata) -> bool,
) -> Result<Vec<PathBuf>, InstanceError> {
    let trimmed = source.trim_end_matches('/');
    let (dir, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => ("", trimmed),
    };
    if dir.contains('*') {
        return Err(op_err(format!(
            "`{source}`: a wildcard (*) is accepted only after the last /"
        )));
    }
    if !name.contains('*') {
        return Ok(vec![resolve(cwd, source)]);
    }
    let folder = resolve(cwd, if dir.is_empty() { "." } else { dir });
    let pat = star_pattern(name)?;
    let mut out = Vec::new();
    let entries = fs::read_dir(&folder).map_err(|e| io_err("read folder", &folder, e))?;
    for e in entries.flatten() {
        let fname = e.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        if pat.matches(fname) && fs::metadata(e.path()).is_ok_and(|m| keep(&m)) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Where one source lands: inside `destination` when it ends with `/` (or when several sources
/// match a pattern), otherwise at `destination` itself.
fn landing(cwd: &Path, src: &Path, destination: &str, into_folder: bool) -> PathBuf {
    let dest = resolve(cwd, destination);
    if into_folder || ends_with_sep(destination) {
        dest.join(src.file_name().unwrap_or_default())
    } else {
        dest
    }
}

fn copy_files(
    cwd: &Path,
    source: &str,
    destination: &str,
    overwrite: bool,
    remove_source: bool,
) -> Result<FileOpOutput, InstanceError> {
    let verb = if remove_source { "move" } else { "copy" };
    let wildcard = source.contains('*');
    if wildcard && !ends_with_sep(destination) {
        return Err(op_err(format!(
            "cannot {verb} `{source}`: with a wildcard the destination must be a folder ending \
             in / (got `{destination}`)"
        )));
    }
    let sources = expand(cwd, source, |m| m.is_file())?;
    if sources.is_empty() {
        return Err(op_err(format!("cannot {verb} `{source}`: no file matches")));
    }
    for src in sources {
        let meta = fs::metadata(&src).map_err(|e| io_err(verb, &src, e))?;
        if !meta.is_file() {
            return Err(op_err(format!(
                "cannot {verb} {}: not a file (use the Folder variant of this action)",
                src.display()
            )));
        }
        let dest = landing(cwd, &src, destination, false);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {
                return Err(op_err(format!(
                    "cannot {verb} to {}: a folder of that name exists (end the destination \
                     with / to {verb} into it)",
                    dest.display()
                )))
            }
            Ok(_) if !overwrite => {
                return Err(op_err(format!(
                    "cannot {verb} to {}: it exists and overwrite is false",
                    dest.display()
                )))
            }
            _ => {}
        }
        make_parents(&dest)?;
        if remove_source {
            move_path(&src, &dest)?;
        } else {
            fs::copy(&src, &dest).map_err(|e| io_err("copy to", &dest, e))?;
        }
    }
    Ok(FileOpOutput::None)
}

fn copy_folders(
    cwd: &Path,
    source: &str,
    destination: &str,
    overwrite: bool,
    remove_source: bool,
) -> Result<FileOpOutput, InstanceError> {
    let verb = if remove_source { "move" } else { "copy" };
    let wildcard = source.contains('*');
    if wildcard && !ends_with_sep(destination) {
        return Err(op_err(format!(
            "cannot {verb} `{source}`: with a wildcard the destination must be a folder ending \
             in / (got `{destination}`)"
        )));
    }
    let sources = expand(cwd, source, |m| m.is_dir())?;
    if sources.is_empty() {
        return Err(op_err(format!(
            "cannot {verb} `{source}`: no folder matches"
        )));
    }
    for src in sources {
        let meta = fs::metadata(&src).map_err(|e| io_err(verb, &src, e))?;
        if !meta.is_dir() {
            return Err(op_err(format!(
                "cannot {verb} {}: not a folder (use the File variant of this action)",
                src.display()
            )));
        }
        let dest = landing(cwd, &src, destination, false);
        if dest.starts_with(&src) {
            return Err(op_err(format!(
                "cannot {verb} {} into itself ({})",
                src.display(),
                dest.display()
            )));
        }
        let exists = fs::symlink_metadata(&dest).is_ok();
        if exists && !overwrite {
            return Err(op_err(format!(
                "cannot {verb} to {}: it exists and overwrite is false",
                dest.display()
            )));
        }
        if exists && !fs::metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(op_err(format!(
                "cannot {verb} to {}: a file of that name exists",
                dest.display()
            )));
        }
        if remove_source {
            if exists {
                fs::remove_dir_all(&dest).map_err(|e| io_err("replace", &dest, e))?;
            }
            make_parents(&dest)?;
            move_path(&src, &dest)?;
        } else {
            copy_tree(&src, &dest)?;
        }
    }
    Ok(FileOpOutput::None)
}

/// Renames, or copies and deletes when source and destination are on different filesystems.
fn move_path(src: &Path, dest: &Path) -> Result<(), InstanceError> {
    match fs::rename(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
            let m = fs::symlink_metadata(src).map_err(|e| io_err("move", src, e))?;
            if m.is_dir() {
                copy_tree(src, dest)?;
                fs::remove_dir_all(src).map_err(|e| io_err("remove", src, e))
            } else {
                fs::copy(src, dest).map_err(|e| io_err("copy to", dest, e))?;
                fs::remove_file(src).map_err(|e| io_err("remove", src, e))
            }
        }
        Err(e) => Err(io_err("move to", dest, e)),
    }
}

/// Copies a folder like `cp -r`: merges into an existing destination, keeps modes, copies
/// symbolic links as links.
fn copy_tree(src: &Path, dest: &Path) -> Result<(), InstanceError> {
    let meta = fs::metadata(src).map_err(|e| io_err("copy", src, e))?;
    fs::create_dir_all(dest).map_err(|e| io_err("create folder", dest, e))?;
    fs::set_permissions(dest, meta.permissions()).map_err(|e| io_err("copy mode to", dest, e))?;
    let entries = fs::read_dir(src).map_err(|e| io_err("read folder", src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read folder", src, e))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| io_err("read", &from, e))?;
        if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| io_err("read link", &from, e))?;
            if fs::symlink_metadata(&to).is_ok() {
                fs::remove_file(&to).map_err(|e| io_err("replace", &to, e))?;
            }
            std::os::unix::fs::symlink(target, &to).map_err(|e| io_err("create link", &to, e))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(|e| io_err("copy to", &to, e))?;
        }
    }
    Ok(())
}

fn walk(
    root: &Path,
    f: &mut dyn FnMut(&Path) -> Result<(), InstanceError>,
) -> Result<(), InstanceError> {
    let entries = fs::read_dir(root).map_err(|e| io_err("read folder", root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read folder", root, e))?;
        let path = entry.path();
        f(&path)?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, f)?;
        }
    }
    Ok(())
}

fn list_files(
    dir: &Path,
    pat: Option<&glob::Pattern>,
    recursive: bool,
    out: &mut Vec<String>,
) -> Result<(), InstanceError> {
    let entries = fs::read_dir(dir).map_err(|e| io_err("list", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            if recursive {
                list_files(&path, pat, recursive, out)?;
            }
            continue;
        }
        let name = entry.file_name();
        if pat.is_none_or(|p| name.to_str().is_some_and(|n| p.matches(n))) {
            out.push(path.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Copies a host file to a path, through a temporary name, creating parents.
pub fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<(), InstanceError> {
    make_parents(dest)?;
    let tmp = dest.with_file_name(format!(
        ".{}.kiln-tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    fs::copy(src, &tmp).map_err(|e| io_err("copy to", &tmp, e))?;
    chmod(&tmp, mode)?;
    fs::rename(&tmp, dest).map_err(|e| io_err("copy to", dest, e))
}

/// The owner uid of a path (used by tests and by inventories).
pub fn owner_of(p: &Path) -> Option<(u32, u32)> {
    fs::metadata(p).ok().map(|m| (m.uid(), m.gid()))
}
