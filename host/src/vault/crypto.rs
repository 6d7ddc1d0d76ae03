//! Encryption at rest (FORMAT.md, "Encryption"): a random 256-bit master
//! key encrypts every record and every index, snapshot and document file
//! with XChaCha20-Poly1305 (a random 192-bit nonce each time, so nonces
//! never repeat in practice); the master key is stored only wrapped, in
//! key files, each under a key derived from one passphrase (or key file's
//! contents) with argon2id.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

/// Bytes a sealed message adds: nonce before, tag after.
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// argon2id cost of new key files: 64 MiB, 3 passes, 1 lane (OWASP's
/// second recommended setting); key files keep their own, so this may grow.
const M_COST_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

/// What is sealed, so that bytes of one kind never open as another.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Record,
    /// An index, snapshot or document file, with the 8 bytes of its
    /// envelope header (magic and version), so a file never opens under
    /// another type's header.
    File([u8; 8]),
    MasterKey,
}

impl Purpose {
    fn aad(self) -> Vec<u8> {
        match self {
            Purpose::Record => b"hookvault record".to_vec(),
            Purpose::File(header) => [&b"hookvault file "[..], &header].concat(),
            Purpose::MasterKey => b"hookvault master key".to_vec(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("wrong passphrase: none of the vault's keys opens with it")]
    WrongKey,
    #[error("does not authenticate under the vault's key (damaged, or not written with it)")]
    Unauthentic,
    #[error("{0}")]
    Internal(String),
}

/// A passphrase or a key file's contents. Never printed.
#[derive(Clone)]
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// The vault's master key.
pub struct MasterKey {
    raw: [u8; 32],
    aead: XChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| CryptoError::Internal(format!("random: {e}")))?;
    Ok(bytes)
}

fn seal_with(
    aead: &XChaCha20Poly1305,
    purpose: Purpose,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = random::<NONCE_LEN>()?;
    let sealed = aead
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &purpose.aad(),
            },
        )
        .map_err(|_| CryptoError::Internal("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_with(
    aead: &XChaCha20Poly1305,
    purpose: Purpose,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Unauthentic);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    aead.decrypt(
        XNonce::from_slice(nonce),
        Payload {
            msg: body,
            aad: &purpose.aad(),
        },
    )
    .map_err(|_| CryptoError::Unauthentic)
}

impl MasterKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self::from_raw(random::<32>()?))
    }

    fn from_raw(raw: [u8; 32]) -> Self {
        Self {
            aead: XChaCha20Poly1305::new((&raw).into()),
            raw,
        }
    }

    /// The key of record ids and path keys (keyed BLAKE3), derived from
    /// the master key.
    pub fn id_key(&self) -> [u8; 32] {
        blake3::derive_key("hookvault 2026 record ids and path keys", &self.raw)
    }

    /// What `config` names the vault's master key by (hex): a key file
    /// that opens to another key is not this vault's. One-way, so it
    /// tells nothing of the key.
    pub fn fingerprint(&self) -> String {
        blake3::derive_key("hookvault 2026 master key fingerprint", &self.raw)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `nonce ‖ ciphertext ‖ tag`.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.aead, purpose, plaintext)
    }

    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.aead, purpose, sealed)
    }

    /// A new key file for this master key, opened by `passphrase`.
    pub fn wrap(
        &self,
        passphrase: &Passphrase,
        label: &str,
        now_ms: u64,
    ) -> Result<KeyFile, CryptoError> {
        let salt = random::<16>()?;
        let kek = derive(passphrase, &salt, M_COST_KIB, T_COST, P_COST)?;
        let wrapped = seal_with(&kek, Purpose::MasterKey, &self.raw)?;
        Ok(KeyFile {
            kdf: "argon2id".into(),
            m_cost_kib: M_COST_KIB,
            t_cost: T_COST,
            p_cost: P_COST,
            salt: hex::encode(salt),
            wrapped: hex::encode(wrapped),
            created_ms: now_ms,
            label: label.to_string(),
        })
    }
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8],
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<XChaCha20Poly1305, CryptoError> {
    let params = Params::new(m_cost_kib, t_cost, p_cost, Some(32))
        .map_err(|e| CryptoError::Internal(format!("argon2 parameters: {e}")))?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(&passphrase.0, salt, &mut key)
        .map_err(|e| CryptoError::Internal(format!("argon2: {e}")))?;
    Ok(XChaCha20Poly1305::new((&key).into()))
}

/// A key file (`keys/<64 hex>`): the master key wrapped under one
/// passphrase. JSON; the file is immutable like every other.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub kdf: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// 16 bytes, hex.
    pub salt: String,
    /// `nonce ‖ AEAD(master key) ‖ tag`, hex.
    pub wrapped: String,
    pub created_ms: u64,
    pub label: String,
}

impl KeyFile {
    /// The master key, if `passphrase` opens this key file.
    pub fn unwrap_key(&self, passphrase: &Passphrase) -> Result<MasterKey, CryptoError> {
        if self.kdf != "argon2id" {
            return Err(CryptoError::Internal(format!(
                "key file uses kdf {:?}; this build knows argon2id",
                self.kdf
            )));
        }
        let bad = |what: &str| CryptoError::Internal(format!("key file: bad {what}"));
        let salt = hex::decode(&self.salt).map_err(|_| bad("salt"))?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| bad("wrapped key"))?;
        // Far above what this build writes, far below what would let a
        // tampered key file exhaust memory (4 GiB).
        if self.m_cost_kib > 4 * 1024 * 1024 || self.t_cost > 64 || self.p_cost > 16 {
            return Err(bad("argon2 cost"));
        }
        let kek = derive(passphrase, &salt, self.m_cost_kib, self.t_cost, self.p_cost)?;
        let raw = match open_with(&kek, Purpose::MasterKey, &wrapped) {
            Ok(raw) => raw,
            Err(CryptoError::Unauthentic) => return Err(CryptoError::WrongKey),
            Err(e) => return Err(e),
        };
        let raw: [u8; 32] = raw.try_into().map_err(|_| bad("master key length"))?;
        Ok(MasterKey::from_raw(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_only_with_their_key_and_purpose() {
        let key = MasterKey::generate().expect("key");
        let other = MasterKey::generate().expect("key");
        let sealed = key.seal(Purpose::Record, b"secret bytes").expect("seal");
        assert_eq!(sealed.len(), NONCE_LEN + 12 + TAG_LEN);
        assert_eq!(
            key.open(Purpose::Record, &sealed).expect("open"),
            b"secret bytes"
        );
        assert!(matches!(
            other.open(Purpose::Record, &sealed),
            Err(CryptoError::Unauthentic)
        ));
        assert!(matches!(
            key.open(Purpose::File(*b"HVINDX\x01\x02"), &sealed),
            Err(CryptoError::Unauthentic)
        ));
        // A file opens only under the header it was sealed with: an index
        // file relabelled as a snapshot file does not.
        let file = key
            .seal(Purpose::File(*b"HVINDX\x01\x02"), b"body")
            .expect("seal");
        assert!(matches!(
            key.open(Purpose::File(*b"HVSNAP\x01\x02"), &file),
            Err(CryptoError::Unauthentic)
        ));
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN + 3] ^= 1;
        assert!(matches!(
            key.open(Purpose::Record, &flipped),
            Err(CryptoError::Unauthentic)
        ));
        assert!(key.open(Purpose::Record, &sealed[..10]).is_err());
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            key.seal(Purpose::Record, b"secret bytes").expect("seal")
        );
    }

    #[test]
    fn a_key_file_opens_with_its_passphrase_only() {
        let key = MasterKey::generate().expect("key");
        let file = key
            .wrap(&Passphrase::new("correct horse"), "ops", 1)
            .expect("wrap");
        let again = file
            .unwrap_key(&Passphrase::new("correct horse"))
            .expect("unwrap");
        let sealed = key
            .seal(Purpose::File(*b"HVINDX\x01\x02"), b"x")
            .expect("seal");
        assert_eq!(
            again
                .open(Purpose::File(*b"HVINDX\x01\x02"), &sealed)
                .expect("open"),
            b"x"
        );
        assert!(matches!(
            file.unwrap_key(&Passphrase::new("wrong horse")),
            Err(CryptoError::WrongKey)
        ));
        let mut greedy = file.clone();
        greedy.m_cost_kib = u32::MAX;
        assert!(matches!(
            greedy.unwrap_key(&Passphrase::new("correct horse")),
            Err(CryptoError::Internal(_))
        ));
    }
}
