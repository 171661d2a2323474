//! The key store, layers and chunks, end to end within the crate.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

const A: &str = "111111111111";
const B: &str = "222222222222";

fn store() -> (tempfile::TempDir, KeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = KeyStore::new(dir.path(), None);
    (dir, s)
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(crypto::sha256(&[b])))
}

#[test]
fn arns_parse_and_print() {
    let arn = KeyArn::new(A, "0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60");
    let text = arn.to_string();
    assert_eq!(
        text,
        "arn:kiln:kms:local:111111111111:key/0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60"
    );
    assert_eq!(KeyArn::parse(&text).unwrap(), Some(arn));
    assert_eq!(
        KeyArn::parse("0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60").unwrap(),
        None
    );
    for bad in [
        "alias/x",
        "arn:aws:kms:us-east-1:111111111111:key/0f8e2c1a-6a55-4f5b-9d3e-1b2c3d4e5f60",
        "arn:kiln:kms:local:1:key/x",
        "",
    ] {
        assert!(
            matches!(KeyArn::parse(bad), Err(KmsError::BadReference(_))),
            "{bad}"
        );
    }
}

#[test]
fn keys_are_sealed_at_rest_and_files_are_private() {
    let (dir, s) = store();
    let k = s.create(A, "golden images").unwrap();
    let master = std::fs::metadata(dir.path().join("master.key")).unwrap();
    assert_eq!(master.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let open = s.open(&k.arn.to_string(), A).unwrap();
    // Neither the symmetric key nor the P-256 scalar appears in the store, in any encoding.
    let text = std::fs::read_to_string(s.path()).unwrap();
    use base64::Engine as _;
    for secret in [&open.symmetric()[..], &open.scalar()[..]] {
        assert!(!text.contains(&hex::encode(secret)));
        assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(secret)));
    }
    assert!(text.contains("golden images"));
    // By bare id too, and the same material again.
    let again = s.open(&k.arn.key_id, A).unwrap();
    assert_eq!(again.symmetric(), open.symmetric());
}

#[test]
fn a_missing_or_wrong_master_key_is_a_clear_error() {
    let (dir, s) = store();
    let k = s.create(A, "").unwrap();
    let master = dir.path().join("master.key");
    let saved = std::fs::read(&master).unwrap();
    std::fs::remove_file(&master).unwrap();
    let e = s.open(&k.arn.key_id, A).unwrap_err();
    assert!(matches!(e, KmsError::MasterKeyMissing { .. }), "{e}");
    assert!(e.to_string().contains("restore"), "{e}");
    // And no new master key was made behind the user's back, not even by create.
    assert!(s.create(A, "").is_err());
    assert!(!master.exists());

    std::fs::write(&master, format!("{}\n", "ab".repeat(32))).unwrap();
    let e = s.open(&k.arn.key_id, A).unwrap_err();
    assert!(matches!(e, KmsError::WrongMasterKey { .. }), "{e}");
    assert!(e.to_string().contains(&k.arn.to_string()), "{e}");

    std::fs::write(&master, "not a key").unwrap();
    assert!(matches!(
        s.open(&k.arn.key_id, A),
        Err(KmsError::MasterKeyDamaged { .. })
    ));
    std::fs::write(&master, saved).unwrap();
    s.open(&k.arn.key_id, A).unwrap();

    // A configured master key file elsewhere.
    let other = KeyStore::new(dir.path(), Some(dir.path().join("elsewhere.key")));
    assert!(matches!(
        other.open(&k.arn.key_id, A),
        Err(KmsError::MasterKeyMissing { .. })
    ));
}

#[test]
fn disabled_keys_and_other_accounts_are_refused() {
    let (_dir, s) = store();
    let k = s.create(A, "").unwrap();
    let arn = k.arn.to_string();
    // B cannot find it by id, is refused by ARN, and cannot change it.
    assert!(matches!(
        s.open(&k.arn.key_id, B),
        Err(KmsError::NoSuchKey(_))
    ));
    let e = s.open(&arn, B).unwrap_err();
    assert!(matches!(e, KmsError::NotPermitted { .. }), "{e}");
    assert!(
        e.to_string().contains(B) && e.to_string().contains("kiln key grant"),
        "{e}"
    );
    assert!(matches!(
        s.grant(&arn, B, B),
        Err(KmsError::NotOwner { .. })
    ));
    assert!(s.list(B).unwrap().is_empty());

    s.grant(&arn, A, B).unwrap();
    s.open(&k.arn.key_id, B).unwrap();
    assert_eq!(s.list(B).unwrap().len(), 1);
    assert!(matches!(
        s.set_state(&arn, B, KeyState::Disabled),
        Err(KmsError::NotOwner { .. })
    ));

    s.set_state(&arn, A, KeyState::Disabled).unwrap();
    for who in [A, B] {
        let e = s.open(&arn, who).unwrap_err();
        assert!(matches!(e, KmsError::Disabled(_)), "{e}");
        assert!(e.to_string().contains(&arn), "{e}");
    }
    s.set_state(&arn, A, KeyState::Enabled).unwrap();
    s.revoke(&arn, A, B).unwrap();
    assert!(matches!(
        s.open(&arn, B),
        Err(KmsError::NotPermitted { .. })
    ));
    s.open(&arn, A).unwrap();
}

#[test]
fn layers_round_trip_deterministically_and_tampering_is_detected() {
    let (_dir, s) = store();
    let k = s.create(A, "").unwrap();
    let key = s.open(&k.arn.key_id, A).unwrap();
    // Over several pieces, and not a multiple of 16 bytes.
    let plain: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = digest(&plain);
    let mt = "application/vnd.oci.image.layer.v1.tar+gzip";
    let mut enc = Vec::new();
    let layer = key
        .encrypt_layer(&d, mt, &mut plain.as_slice(), &mut enc)
        .unwrap();
    assert_eq!(layer.media_type, format!("{mt}+encrypted"));
    assert_eq!(layer.size, plain.len() as u64);
    assert_eq!(layer.digest, digest(&enc));
    assert_ne!(enc, plain);

    let mut again = Vec::new();
    assert_eq!(
        key.encrypt_layer(&d, mt, &mut plain.as_slice(), &mut again)
            .unwrap(),
        layer
    );
    assert_eq!(again, enc);

    let mut out = Vec::new();
    assert_eq!(
        key.decrypt_layer(&layer.annotations, &mut enc.as_slice(), &mut out)
            .unwrap(),
        d
    );
    assert!(out == plain);

    // A flipped bit is caught by the HMAC.
    let mut bad = enc.clone();
    bad[100_000] ^= 1;
    let e = key
        .decrypt_layer(&layer.annotations, &mut bad.as_slice(), &mut Vec::new())
        .unwrap_err();
    assert!(matches!(e, KmsError::Tampered(_)), "{e}");

    // Another key opens nothing.
    let other = s.create(A, "").unwrap();
    let other = s.open(&other.arn.key_id, A).unwrap();
    assert!(other
        .decrypt_layer(&layer.annotations, &mut enc.as_slice(), &mut Vec::new())
        .is_err());

    // The claimed digest is checked.
    let wrong = digest(b"something else");
    assert!(key
        .encrypt_layer(&wrong, mt, &mut plain.as_slice(), &mut Vec::new())
        .is_err());
    let none: BTreeMap<String, String> = BTreeMap::new();
    assert!(matches!(
        key.decrypt_layer(&none, &mut enc.as_slice(), &mut Vec::new()),
        Err(KmsError::Format(_))
    ));
}

#[test]
fn chunks_round_trip_and_the_data_key_is_reused_per_image() {
    let (dir, s) = store();
    let k = s.create(A, "").unwrap();
    let key = s.open(&k.arn.key_id, A).unwrap();
    let keys = DataKeys::new(dir.path());
    let (dk, wrapped) = keys.for_image(&key, A, "golden").unwrap();
    let frame = b"a zstd frame, say".to_vec();
    let sealed = dk.seal(&frame).unwrap();
    assert_eq!(sealed.len(), frame.len() + disk::SEAL_OVERHEAD);
    assert_eq!(dk.seal(&frame).unwrap(), sealed);
    assert_eq!(dk.open(&sealed).unwrap(), frame);
    let mut bad = sealed.clone();
    bad[20] ^= 1;
    assert!(matches!(dk.open(&bad), Err(KmsError::Tampered(_))));

    // The next version of the image gets the same data key: the same sealed chunk.
    let (dk2, wrapped2) = keys.for_image(&key, A, "golden").unwrap();
    assert_eq!(wrapped2, wrapped);
    assert_eq!(dk2.seal(&frame).unwrap(), sealed);
    // Another image gets another.
    let (dk3, _) = keys.for_image(&key, A, "other").unwrap();
    assert_ne!(dk3.seal(&frame).unwrap(), sealed);

    // The wrapped key, from the artifact, unwraps for whoever may use the KMS key.
    let unwrapped = key.unwrap_data_key(&wrapped).unwrap();
    assert_eq!(unwrapped.open(&sealed).unwrap(), frame);
    let other = s.create(A, "").unwrap();
    let other = s.open(&other.arn.key_id, A).unwrap();
    assert!(other.unwrap_data_key(&wrapped).is_err());
    let file = std::fs::read_dir(dir.path().join("kms/datakeys").join(A))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some())
        .unwrap();
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn the_decryption_key_is_pkcs8_pem() {
    let (_dir, s) = store();
    let k = s.create(A, "").unwrap();
    let pem = s
        .open(&k.arn.key_id, A)
        .unwrap()
        .decryption_key_pem()
        .unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
}
