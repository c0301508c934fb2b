//! Forwards LDK's log records to the `log` facade.

use lightning::util::logger::{Level, Logger, Record};

/// An LDK [`Logger`] that hands every record to the [`log`] crate, so the
/// application picks the backend (env_logger, tracing-log, a file, ...).
///
/// Records carry the channel id and peer id in front of the message when LDK
/// knows them, because LDK leaves them out of the message body.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogBridge;

impl Logger for LogBridge {
    fn log(&self, record: Record) {
        let level = match record.level {
            Level::Gossip | Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        if !log::log_enabled!(target: record.module_path, level) {
            return;
        }
        let channel = record
            .channel_id
            .map(|c| format!(" chan={c}"))
            .unwrap_or_default();
        let peer = record
            .peer_id
            .map(|p| format!(" peer={p}"))
            .unwrap_or_default();
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(record.module_path)
                .file(Some(record.file))
                .line(Some(record.line))
                .args(format_args!("{}{}{}", record.args, channel, peer))
                .build(),
        );
    }
}
