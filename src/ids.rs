//! The names of things: splices, batches and channels.

use bitcoin::secp256k1::PublicKey;
use lightning::ln::types::ChannelId;
use serde::{Deserialize, Serialize};

/// Identifies one splice for its whole life. Ids only grow: records are
/// never deleted, so an id is never handed out twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SpliceId(pub u64);

impl std::fmt::Display for SpliceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "splice-{}", self.0)
    }
}

impl std::str::FromStr for SpliceId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("splice-").unwrap_or(s).parse().map(SpliceId)
    }
}

/// Identifies a batch of splices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId(pub u64);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch-{}", self.0)
    }
}

impl std::str::FromStr for BatchId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("batch-").unwrap_or(s).parse().map(BatchId)
    }
}

/// A channel, named by its id and counterparty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRef {
    /// The channel id.
    pub channel_id: ChannelId,
    /// The counterparty.
    pub counterparty: PublicKey,
}

/// Serde for a `ChannelId` as lower-case hex.
pub(crate) mod channel_id_hex {
    use bitcoin::hex::{DisplayHex, FromHex};
    use lightning::ln::types::ChannelId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ChannelId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.0.to_lower_hex_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChannelId, D::Error> {
        let hex = String::deserialize(d)?;
        <[u8; 32]>::from_hex(&hex)
            .map(ChannelId)
            .map_err(serde::de::Error::custom)
    }
}

/// Serializes a `SystemTime` as whole seconds since the Unix epoch.
pub(crate) mod unix_seconds {
    use std::time::SystemTime;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::to_unix_seconds(*time))
    }
}

/// `time` in whole seconds since the Unix epoch (0 before it).
pub(crate) fn to_unix_seconds(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `seconds` since the Unix epoch as a time (saturating far in the future).
pub(crate) fn from_unix_seconds(seconds: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(seconds))
        .unwrap_or(std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(u32::MAX)))
}

/// Now, in whole seconds: what a record keeps (and the journal stores), so
/// a record reads the same before and after a restart.
pub(crate) fn now_in_seconds() -> std::time::SystemTime {
    from_unix_seconds(unix_now())
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
