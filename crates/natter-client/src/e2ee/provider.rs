//! The OpenMLS provider of one device: RustCrypto for the primitives and an
//! in-memory key-value store for MLS state, which the engine snapshots as
//! opaque bytes for the SDK's local store (the same code builds for wasm32,
//! where there is no SQLite and storage is async).

use std::collections::HashMap;

use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;

use super::E2eeError;

/// RustCrypto plus a [`MemoryStorage`] the engine can read out and replace.
#[derive(Default)]
pub(crate) struct EngineProvider {
    /// Primitives (and randomness) for OpenMLS.
    crypto: RustCrypto,
    /// Every MLS secret and group state of this device, keyed by OpenMLS.
    storage: MemoryStorage,
}

impl std::fmt::Debug for EngineProvider {
    /// No values: the store holds the device's secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineProvider").finish_non_exhaustive()
    }
}

impl OpenMlsProvider for EngineProvider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

impl EngineProvider {
    /// A copy of the whole store (for snapshots and for rolling back an
    /// operation that failed half-way, such as a refused Welcome).
    pub(crate) fn export(&self) -> Result<HashMap<Vec<u8>, Vec<u8>>, E2eeError> {
        self.storage
            .values
            .read()
            .map(|values| values.clone())
            .map_err(|_| E2eeError::Poisoned)
    }

    /// Replaces the whole store.
    pub(crate) fn import(&self, values: HashMap<Vec<u8>, Vec<u8>>) -> Result<(), E2eeError> {
        let mut guard = self
            .storage
            .values
            .write()
            .map_err(|_| E2eeError::Poisoned)?;
        *guard = values;
        Ok(())
    }
}
