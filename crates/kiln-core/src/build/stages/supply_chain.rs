//! The supply-chain part of DISTRIBUTING: the build's SBOMs and provenance
//! ([`crate::attest`]), its account's signing key, and what registry regions attach
//! ([`kiln_dist::attach`]); the documents are kept in the build's log folder and beside each
//! folder region's layout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_dist::attach::{Attached, Attachments, Document};
use kiln_dist::pieces::Piece;
use kiln_dist::{Output, OutputKind};

use crate::attest::{DocumentFile, Documents, Subject, SubjectRecord, SupplyChainRecord};
use crate::build::failure::StageFailure;
use crate::build::run::BuildRun;
use crate::record::State;

/// The account's signing key could not be had: the distribution fails before it writes.
#[derive(Debug)]
pub(crate) struct SignFailure(crate::signing::SigningError);

impl std::fmt::Display for SignFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot sign the image: {}", self.0)
    }
}

impl From<SignFailure> for StageFailure {
    fn from(e: SignFailure) -> Self {
        StageFailure::new(State::Distributing, e.to_string())
    }
}

/// What registry targets share: the attachments and the log of what they attached.
pub(crate) struct Attaching {
    pub(crate) attachments: Attachments,
    pub(crate) log: Arc<Mutex<Vec<Attached>>>,
    subjects: Vec<Subject>,
    documents: Documents,
    fingerprint: String,
}

/// The subjects of registry and bucket pieces: `NAME`, `NAME/disk`, `NAME/containerdisk`.
fn piece_subjects(name: &str, pieces: &[Piece]) -> Vec<Subject> {
    pieces
        .iter()
        .map(|p| Subject {
            name: match p.suffix {
                Some(s) => format!("{}/{s}", name.to_ascii_lowercase()),
                None => name.to_ascii_lowercase(),
            },
            digest: p.digest.clone(),
        })
        .collect()
}

/// Prepares the documents and the signer for the registry pieces. A key that cannot be had
/// fails the distribution before anything is written.
pub(crate) fn prepare(run: &BuildRun<'_>, pieces: &[Piece]) -> Result<Attaching, SignFailure> {
    let subjects = piece_subjects(&run.recipe.name, pieces);
    let documents = crate::attest::documents(&run.rec, run.recipe, &subjects, chrono::Utc::now());
    let key = crate::signing::KeyStore::new(run.home)
        .key(&run.rec.account)
        .map_err(SignFailure)?;
    Ok(attaching(key, &run.rec, subjects, documents))
}

/// The subjects of folder regions' outputs (a layout's manifest, a disk file's digest), for a
/// build that went to no registry or bucket.
fn output_subjects(name: &str, outputs: &[Output]) -> Vec<Subject> {
    let mut subjects: Vec<Subject> = Vec::new();
    for o in outputs {
        let name = match o.kind {
            OutputKind::OciLayout => name.to_ascii_lowercase(),
            OutputKind::Disk(f) => format!("{}.{}", name.to_ascii_lowercase(), f.extension()),
            _ => continue,
        };
        if !subjects.iter().any(|s| s.digest == o.manifest_digest) {
            subjects.push(Subject {
                name,
                digest: o.manifest_digest.clone(),
            });
        }
    }
    subjects
}

/// The folders of folder regions (a layout's, a disk's region folder).
fn folders(outputs: &[Output]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for o in outputs {
        let dir = match o.kind {
            OutputKind::OciLayout => Some(o.path().to_path_buf()),
            OutputKind::Disk(_) => o
                .path()
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf),
            _ => None,
        };
        if let Some(d) = dir.filter(|d| !dirs.contains(d)) {
            dirs.push(d);
        }
    }
    dirs
}

/// After a successful distribution: the documents written into the log folder and beside each
/// folder region's layout (`DIR/supply-chain/NAME-VERSION-BUILD.KIND.json`), and the record's
/// supply-chain part. Writing a file is best effort here (the image is already in its regions):
/// a failure is logged and the record lists only what was written.
pub(crate) fn record(run: &mut BuildRun<'_>, attaching: Option<Attaching>) {
    let outputs = run.rec.outputs.clone();
    let (subjects, documents, signing_key, attached) = match attaching {
        Some(a) => {
            let attached = a.log.lock().map(|l| l.clone()).unwrap_or_default();
            (a.subjects, a.documents, Some(a.fingerprint), attached)
        }
        None => {
            let subjects = output_subjects(&run.recipe.name, &outputs);
            let docs =
                crate::attest::documents(&run.rec, run.recipe, &subjects, chrono::Utc::now());
            (subjects, docs, None, Vec::new())
        }
    };
    if subjects.is_empty() {
        return;
    }
    let stem = run.rec.build_id().build_stem();
    let mut dirs = vec![run.rec.logs.join("supply-chain")];
    dirs.extend(
        folders(&outputs)
            .into_iter()
            .map(|d| d.join("supply-chain")),
    );
    let mut files = Vec::new();
    for dir in dirs {
        for (kind, bytes) in &documents.docs {
            let path = dir.join(format!("{stem}.{}", kind.suffix()));
            let written = std::fs::create_dir_all(&dir).and_then(|_| {
                let tmp = dir.join(format!(".{stem}.{}.tmp", kind.suffix()));
                std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &path))
            });
            match written {
                Ok(()) => files.push(DocumentFile {
                    kind: *kind,
                    path,
                    digest: format!("sha256:{}", crate::store::sha256_hex(bytes)),
                }),
                Err(e) => tracing::warn!("cannot keep {}: {e}", path.display()),
            }
        }
    }
    run.rec.supply_chain = Some(SupplyChainRecord {
        signing_key,
        subjects: subjects
            .into_iter()
            .map(|s| SubjectRecord {
                name: s.name,
                digest: s.digest,
            })
            .collect(),
        documents: files,
        attached,
    });
}

/// For a finished build distributed again: its account's key, and the documents its first
/// distribution kept in its log folder (made then, about its pieces, which are the same
/// manifests now). A build from before kiln kept documents is signed only.
pub(crate) fn again(
    home: &crate::store::Home,
    rec: &crate::record::ImageRecord,
) -> Result<Attaching, SignFailure> {
    let key = crate::signing::KeyStore::new(home)
        .key(&rec.account)
        .map_err(SignFailure)?;
    let logs = rec.logs.join("supply-chain");
    let mut docs = Vec::new();
    for kind in crate::attest::DocumentKind::ALL {
        let path = logs.join(format!("{}.{}", rec.build_id().build_stem(), kind.suffix()));
        match std::fs::read(&path) {
            Ok(bytes) => docs.push((kind, bytes)),
            Err(e) => tracing::warn!("{}: {e}; not attached", path.display()),
        }
    }
    let subjects = rec
        .supply_chain
        .iter()
        .flat_map(|s| s.subjects.iter())
        .map(|s| Subject {
            name: s.name.clone(),
            digest: s.digest.clone(),
        })
        .collect();
    let documents = Documents { docs };
    Ok(attaching(key, rec, subjects, documents))
}

/// Registry targets' attachments of `documents`, signed with `key`.
fn attaching(
    key: crate::signing::AccountKey,
    rec: &crate::record::ImageRecord,
    subjects: Vec<Subject>,
    documents: Documents,
) -> Attaching {
    let fingerprint = key.fingerprint();
    let attachments = Attachments {
        signer: Arc::new(key),
        documents: documents
            .docs
            .iter()
            .map(|(k, b)| Document {
                artifact_type: k.artifact_type().to_string(),
                bytes: b.clone(),
            })
            .collect(),
        created: crate::attest::time(rec.created),
        creator: format!("kiln {}", crate::attest::KILN_VERSION),
    };
    Attaching {
        attachments,
        log: Arc::default(),
        subjects,
        documents,
        fingerprint,
    }
}

/// Adds what a distribution again attached to the record.
pub(crate) fn record_again(rec: &mut crate::record::ImageRecord, attaching: &Attaching) {
    let attached = attaching.log.lock().map(|l| l.clone()).unwrap_or_default();
    let sc = rec.supply_chain.get_or_insert_with(Default::default);
    sc.signing_key
        .get_or_insert_with(|| attaching.fingerprint.clone());
    sc.attached.extend(attached);
}
