"""Names a service may not take: what its name becomes on a guest is already someone's.

A catalog service's name becomes paths, a unit, a user and a certificate on its guests:
``/var/lib/<name>`` (the unit's ``StateDirectory=``, which systemd creates *and chowns to the
service user*), ``phoenix-<name>.service``, ``/etc/sysusers.d/phoenix-<name>.conf``, the user
``svc-<name>``, ``/etc/phoenix/tls/<name>.crt`` and the certbot lineage ``<name>``, a compose
stack ``phoenix-<name>``, and the Traefik routers, services and transports ``<name>-...``.
A name that is already one of these on the guest (Debian's own state directories, the units,
users and certificates of the lab's tiers) would take it over: ``dpkg`` would hand
``/var/lib/dpkg`` to the service user, ``acme-renew`` would replace the renewal unit,
``phoenix-root`` the root certificate every guest trusts.

The lab's own names are listed from the code that makes them (``tests/test_hostile_input.py``
checks the list against every path the shipped plans push); the guest OS's from Debian 12.
"""

from __future__ import annotations

#: name -> what it already is on a guest.
RESERVED_SERVICE_NAMES: dict[str, str] = {}


def _reserve(why: str, *names: str) -> None:
    for name in names:
        RESERVED_SERVICE_NAMES.setdefault(name, why)


# -- the lab's own: units, state, certificates, users, Traefik objects ------------------------------
_reserve("Phoenix's own state (/var/lib/phoenix, /etc/phoenix)", "phoenix")
_reserve("the certificate renewal unit phoenix-acme-renew and its state /var/lib/phoenix-acme",
         "acme-renew", "acme", "phoenix-acme")
_reserve("phoenix-apply and its recovery unit phoenix-apply-recover", "apply", "apply-recover", "nginx-reload")
_reserve("the Phoenix root certificate every guest trusts (/etc/phoenix/tls/phoenix-root.crt)", "phoenix-root")
_reserve("the gateway's certificates (/etc/phoenix/tls/gateway-*)",
         "gateway-client", "gateway-public", "gateway-public-placeholder")
_reserve("a lab tier's service user, unit and state directory",
         "traefik", "step", "step-ca", "bind", "bind9", "named", "nginx", "www-data", "certbot", "letsencrypt",
         "docker", "containerd", "portainer", "portainer-agent", "portainer-api")
_reserve("the mesh's own Traefik routers (mesh-gateway, mesh-internal)", "mesh")

# -- the guest OS's: Debian 12's users and groups, and its directories under /var/lib ---------------
_reserve("a Debian system user or group",
         "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "backup",
         "list", "irc", "gnats", "nobody", "nogroup", "systemd-network", "systemd-resolve", "systemd-timesync",
         "systemd-journal", "messagebus", "sshd", "_apt", "adm", "tty", "disk", "kmem", "dialout", "fax", "voice",
         "cdrom", "floppy", "tape", "sudo", "audio", "dip", "operator", "src", "shadow", "utmp", "video", "sasl",
         "plugdev", "staff", "users", "input", "render", "kvm", "netdev", "crontab", "polkitd", "ssl-cert")
_reserve("a Debian state directory under /var/lib (systemd's StateDirectory= would chown it)",
         "apt", "dpkg", "systemd", "ucf", "misc", "pam", "private", "dbus", "polkit-1", "python", "man-db",
         "logrotate", "dhcp", "initramfs-tools", "sgml-base", "xml-core", "usrmerge", "os-prober", "vim", "git",
         "cloud", "cloud-init", "chrony", "ntp", "ntpsec", "snapd", "machines", "portables", "lxc", "lxcfs",
         "nvidia", "nfs", "postfix", "exim4", "sudo", "update-notifier", "ubuntu-advantage", "landscape",
         "shells.state", "emacsen-common", "dictionaries-common", "ispell", "aspell", "fwupd", "udisks2",
         "upower", "colord", "ghostscript", "lightdm", "gdm3", "AccountsService", "NetworkManager", "iptables",
         "nftables", "openssh", "ssh", "mlocate", "plocate", "locate", "sss", "samba", "dhcpcd", "containers")
