//! Channel keys from LDK's `KeysManager`, with close outputs paid to the
//! on-chain wallet so that closed-channel funds land where the user sees them.

use std::sync::Arc;

use bitcoin::ScriptBuf;
use lightning::ln::script::ShutdownScript;
use lightning::sign::{InMemorySigner, KeysManager, SignerProvider};

use crate::wallet::BdkWallet;

/// A [`SignerProvider`] that derives channel signers with [`KeysManager`]
/// and takes destination and shutdown scripts from the [`BdkWallet`].
pub struct WalletSignerProvider {
    keys: Arc<KeysManager>,
    wallet: Arc<BdkWallet>,
}

impl WalletSignerProvider {
    /// Wraps `keys`, paying close outputs to `wallet`.
    pub fn new(keys: Arc<KeysManager>, wallet: Arc<BdkWallet>) -> Self {
        Self { keys, wallet }
    }

    fn wallet_script(&self) -> Result<ScriptBuf, ()> {
        self.wallet.new_channel_script().map_err(|e| {
            log::error!("no wallet script for a channel output: {e}");
        })
    }
}

impl SignerProvider for WalletSignerProvider {
    type EcdsaSigner = InMemorySigner;

    fn generate_channel_keys_id(&self, inbound: bool, user_channel_id: u128) -> [u8; 32] {
        self.keys.generate_channel_keys_id(inbound, user_channel_id)
    }

    fn derive_channel_signer(&self, channel_keys_id: [u8; 32]) -> InMemorySigner {
        self.keys.derive_channel_signer(channel_keys_id)
    }

    fn get_destination_script(&self, _channel_keys_id: [u8; 32]) -> Result<ScriptBuf, ()> {
        self.wallet_script()
    }

    fn get_shutdown_scriptpubkey(&self) -> Result<ShutdownScript, ()> {
        let script = self.wallet_script()?;
        ShutdownScript::try_from(script).map_err(|e| {
            log::error!("wallet script is not a valid shutdown script: {e:?}");
        })
    }
}
