//! The commented default `otter/device.toml` that `otter build` puts on the boot partition.
//!
//! Every key is commented out, so the file parses as an empty config (the image's defaults).
//! Lines starting with `## ` explain; lines starting with `# ` are examples: removing the `# `
//! of every example gives a complete, valid config (a unit test checks that, so the template
//! cannot drift from the schema).

/// The text of the default device config.
pub const DEVICE_CONFIG_TEMPLATE: &str = r##"## Otter device config: the settings of this device. Every key is optional; remove the "# " in
## front of a line to use it. `otter configure IMAGE ...` edits this file without mounting
## (it validates before writing). Every key is described in docs/device-config.md.
## A bad value is reported on the serial console, in the journal and by `otterd status`, and
## the device keeps its last good config.

## Host name (letters, digits and inner "-", at most 63).
# hostname = "gateway-17"
## IANA time zone.
# timezone = "Europe/Berlin"
## Two-letter country code for the Wi-Fi regulatory domain.
# country = "DE"
## udev rules, each the text of one rules file.
# udev_rules = ['SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", SYMLINK+="modem"']
## Extra CA certificates (PEM) the device trusts.
# ca_certificates = ["-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"]

## A login user; repeat the [[users]] block for more. Home directories live on the data partition.
# [[users]]
# name = "ops"
## crypt(3) hash made by `otter configure IMAGE --user ops --password`; none: key-only login.
# password_hash = "$6$rounds=5000$examplesalt$examplehashexamplehash"
# ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyExampleKey ops@laptop"]
## Member of the sudo group.
# sudo = true

# [ssh]
## true allows password and root password logins (with a warning banner); default key-only.
# development_mode = false
## Keys that may log in as root, besides those built into the image.
# root_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyExampleKey admin@laptop"]

# [network]
## DNS servers for every connection (default: from DHCP).
# dns = ["1.1.1.1", "9.9.9.9"]
## HTTP(S) proxy for the system and the agent, and the hosts reached without it.
# proxy = "http://proxy.example.com:3128"
# no_proxy = ["localhost", "10.0.0.0/8"]

## A Wi-Fi network; repeat the block for more. No psk: an open network.
# [[network.wifi]]
# ssid = "Factory"
# psk = "correct horse battery staple"
# hidden = false
## Higher is preferred when several networks are in range.
# priority = 10

## Ethernet: none means DHCP on every interface. Addresses make it static.
# [[network.ethernet]]
# interface = "eth0"
# addresses = ["192.168.1.20/24"]
# gateway = "192.168.1.1"

# [time]
## NTP servers (default: the image's).
# ntp = ["pool.ntp.org"]

# [logging]
## "persistent" (journal on the data partition) or "volatile" (RAM only).
# storage = "volatile"
## Most space the journal may use.
# max_size = "32M"

# [server]
## The fleet server this device reports to.
# url = "https://otter.example.com"
## Fleet enrollment key; none: the device waits as pending until accepted on the server.
# enrollment_key = "fleet-key-from-the-server"
## Commit an update even if the server cannot be reached after the reboot (default: must reach it).
# commit_offline = false
## When the device may reboot into an update from the server (local time; default: at once).
# reboot_window = "02:00-04:00"

# [health]
## Seconds after boot by which an updated system must be healthy.
# deadline_secs = 300
## Extra units that must be active, and commands that must exit 0.
# units = ["myapp.service"]
# checks = ["test -e /run/myapp.ready"]
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceConfig;
    use std::path::Path;

    #[test]
    fn template_is_an_empty_config() {
        let c = DeviceConfig::parse(Path::new("device.toml"), DEVICE_CONFIG_TEMPLATE).unwrap();
        assert_eq!(c, DeviceConfig::default());
    }

    #[test]
    fn uncommented_template_is_a_full_valid_config() {
        let text: String = DEVICE_CONFIG_TEMPLATE
            .lines()
            .filter(|l| !l.starts_with("##"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = DeviceConfig::parse(Path::new("device.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.hostname.as_deref(), Some("gateway-17"));
        assert_eq!(c.users.len(), 1);
        assert_eq!(c.network.wifi[0].priority, 10);
        assert_eq!(c.network.ethernet[0].addresses, ["192.168.1.20/24"]);
        assert!(c.server.is_some() && c.health.is_some() && c.logging.is_some());
        assert_eq!(c.ca_certificates.len(), 1);
        // Every top-level key of the schema appears in the template.
        let v = toml::Value::try_from(&c).unwrap();
        let keys: Vec<&String> = v.as_table().unwrap().keys().collect();
        for k in [
            "hostname",
            "timezone",
            "country",
            "users",
            "ssh",
            "network",
            "time",
            "logging",
            "udev_rules",
            "ca_certificates",
            "server",
            "health",
        ] {
            assert!(keys.iter().any(|x| x.as_str() == k), "{k} missing");
        }
    }
}
