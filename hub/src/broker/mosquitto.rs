//! A Mosquitto configuration for edgeship (`edgeship broker mosquitto-config`): a TLS
//! listener that requires client certificates from the hub's CA, takes each client's common
//! name as its user name, refuses revoked certificates (a CRL), and confines each device to
//! its own topics with an ACL; the hub's own certificate (`edgeship-hub`) may use every
//! edgeship topic.

use edgeship_proto::topics::{self, DeviceTopic};

use super::{DEVICE_READS, DEVICE_WRITES};
use crate::trust::pki::HUB_CLIENT_NAME;

/// One file of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    pub name: &'static str,
    pub content: String,
    /// Readable by the broker's user alone (a private key).
    pub private: bool,
}

/// The ACL: `%u` is the client's certificate common name (its device id).
pub fn acl() -> String {
    let mut acl = String::from(
        "# edgeship: every client is named by its certificate (use_identity_as_username).\n\
         # A device reads and writes only its own topics, and reads blob broadcasts.\n",
    );
    let own = |kind: DeviceTopic| format!("{}/%u/{}", topics::PREFIX, kind.suffix());
    for kind in DEVICE_READS {
        acl.push_str(&format!("pattern read {}\n", own(kind)));
    }
    for kind in DEVICE_WRITES {
        acl.push_str(&format!("pattern write {}\n", own(kind)));
    }
    acl.push_str(&format!("pattern read {}/#\n", topics::BROADCAST_PREFIX));
    acl.push_str(&format!(
        "\n# The hub hears every device and speaks to each.\nuser {HUB_CLIENT_NAME}\ntopic readwrite edgeship/#\n"
    ));
    acl
}

/// `mosquitto.conf` for files written in `dir`, listening on `port`.
pub fn mosquitto_conf(dir: &str, port: u16) -> String {
    format!(
        "# Written by `edgeship broker mosquitto-config`. Run: mosquitto -c {dir}/mosquitto.conf\n\
         # After `edgeship device revoke`, write the files again and restart Mosquitto (the\n\
         # revocation list is read at start).\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         # The hub is one client that hears every device: a deep queue, and room for 256 KiB\n\
         # model chunks.\n\
         max_queued_messages 1000000\n\
         max_packet_size 4194304\n\
         \n\
         listener {port}\n\
         cafile {dir}/ca.crt\n\
         certfile {dir}/server.crt\n\
         keyfile {dir}/server.key\n\
         crlfile {dir}/crl.pem\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         acl_file {dir}/acl\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acl_names_every_device_topic_once_with_its_direction() {
        let acl = acl();
        assert!(acl.contains("pattern read edgeship/v1/devices/%u/desired\n"));
        assert!(acl.contains("pattern write edgeship/v1/devices/%u/reported\n"));
        assert!(acl.contains("pattern read edgeship/v1/blobs/#\n"));
        assert!(acl.contains("user edgeship-hub\ntopic readwrite edgeship/#\n"));
        assert_eq!(
            acl.matches("pattern ").count(),
            DEVICE_READS.len() + DEVICE_WRITES.len() + 1
        );
        // Nothing lets a device write downward or read another's upward topics.
        assert!(!acl.contains("pattern write edgeship/v1/devices/%u/desired"));
        assert!(!acl.contains("pattern readwrite"));
    }
}
