//! The container image as registry and bucket regions receive it when the recipe names a KMS
//! key: its layers encrypted (kiln-dist's `encrypt`, kiln-kms's ocicrypt format).

/// The container image piece for registry and bucket regions, encrypted when the recipe names
/// a key (`kmsKeyId`); as it is otherwise.
pub(crate) async fn image_piece(
    run: &crate::build::run::BuildRun<'_>,
    artifact: &kiln_dist::Artifact,
    piece: kiln_dist::pieces::Piece,
) -> Result<kiln_dist::pieces::Piece, crate::build::failure::StageFailure> {
    use crate::record::State;
    let Some(k) = &run.recipe.keys.image else {
        return Ok(piece);
    };
    let fail = |e: String| crate::build::failure::StageFailure::new(State::Distributing, e);
    // Opened again: a key disabled or revoked since the build started encrypts nothing new.
    let key = crate::kms::key_store(run.home, &run.options.kms)
        .open(&k.key, &run.rec.account)
        .map_err(|e| fail(format!("`{}`: {e}", k.field)))?;
    run.observer.event(&crate::build::BuildEvent::Progress {
        message: format!("encrypting the image's layers with {}", key.info().arn),
    });
    let scratch = artifact.scratch.join("encrypted");
    tokio::task::spawn_blocking(move || kiln_dist::encrypt::image_piece(piece, &key, &scratch))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))
}

/// The KMS key the disk's chunks are encrypted with in registry and bucket regions
/// (`blockDeviceMappings[].ebs.kmsKeyId`), opened for the build's account; `None` when the
/// recipe names none.
pub(crate) fn disk_key(
    run: &crate::build::run::BuildRun<'_>,
) -> Result<Option<kiln_kms::OpenKey>, String> {
    let Some(k) = &run.recipe.keys.disk else {
        return Ok(None);
    };
    let key = crate::kms::key_store(run.home, &run.options.kms)
        .open(&k.key, &run.rec.account)
        .map_err(|e| format!("`{}`: {e}", k.field))?;
    run.observer.event(&crate::build::BuildEvent::Progress {
        message: format!("encrypting the disk's chunks with {}", key.info().arn),
    });
    Ok(Some(key))
}
