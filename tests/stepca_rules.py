"""What step-ca 0.28.1 (the release the stacks pin) does with the ca.json fields the lab's older
step-ca (0.19.0, built from Debian's sources) ignores: ``authority.policy`` (read since 0.20)
and an ACME provisioner's ``challenges`` (since 0.23).

A port of the pinned release's own rules, read from github:smallstep/certificates at tag
v0.28.1 (``git show v0.28.1:<file>``), function by function, so that a test can ask what the
pinned CA would answer for a name. Independent of phoenix/pki.py (which the model uses to
refuse a certificate request before anything is deployed): the tests compare the two.

* authority/policy/policy.go ``NewX509PolicyEngine``: the allow and deny lists of
  ``authority.policy.x509``; no engine when neither has names; wildcard names only with
  ``allowWildcardNames``; the subject common name is always verified too.
* policy/options.go ``normalizeAndValidateDNSDomainConstraint``: a DNS constraint is
  lower-cased and trimmed; ``*.d`` keeps ``.d``; a constraint starting with ``.``, with an
  empty label, or with ``*`` anywhere but first is a configuration error (the CA refuses to
  start); ``WithPermittedIPsOrCIDRs``: a CIDR, or a single address.
* policy/validate.go ``validateNames``: a DNS name is refused when only other kinds of names
  are permitted; ``checkNameConstraints``: excluded first, then one permitted match needed;
  ``matchDomainConstraint``: ``.d`` matches exactly ONE label more than ``d`` (not deeper), a
  bare ``d`` matches ``d`` only, ``*.x`` names only with literal wildcards allowed;
  ``matchIPConstraint``: CIDR containment; ``validateCommonName``: the CN as a SAN of its kind.
* acme/api/order.go ``NewOrder``: every identifier of a new order goes through the authority
  policy (``ca.AreSANsAllowed``) and is refused with ``rejectedIdentifier``;
  ``challengeTypes`` + authority/provisioner/acme.go ``IsChallengeEnabled``: a DNS name is
  offered dns-01, and http-01 and tls-alpn-01 unless it is a wildcard, filtered by the
  provisioner's ``challenges`` (all three when the list is empty); ``ACMEChallenge.Validate``:
  the known challenge names (an unknown one stops the CA at start).
"""

from __future__ import annotations

import ipaddress

#: authority/provisioner/acme.go, ACMEChallenge.Validate
KNOWN_CHALLENGES = ("http-01", "dns-01", "tls-alpn-01", "device-attest-01", "wire-oidc-01", "wire-dpop-01")
#: IsChallengeEnabled's default when ``challenges`` is empty
DEFAULT_CHALLENGES = ("http-01", "dns-01", "tls-alpn-01")


class ConfigRefused(ValueError):
    """The pinned step-ca would refuse to start with this configuration."""


def normalize_dns_constraint(constraint: str) -> str:
    c = constraint.strip().lower()
    if not c:
        raise ConfigRefused(f"constraint {constraint!r} can not be empty")
    if ".." in c:
        raise ConfigRefused(f"domain constraint {constraint!r} cannot have empty labels")
    if c.startswith("."):
        raise ConfigRefused(f"domain constraint {constraint!r} with wildcard should start with *")
    if c.rfind("*") > 0:
        raise ConfigRefused(f"domain constraint {constraint!r} can only have wildcard as starting character")
    if len(c) >= 2 and c[0] == "*" and c[1] != ".":
        raise ConfigRefused(f"wildcard character in domain constraint {constraint!r} can only match full labels")
    return c[1:] if c.startswith("*.") else c


def _labels(domain: str) -> list[str] | None:
    """domainToReverseLabels: None for an absolute name, an empty label or a bad character."""
    labels = domain.split(".")[::-1]
    if not domain or any(not label or any(ord(ch) < 33 or ord(ch) > 126 for ch in label) for label in labels):
        return None
    return labels


class X509Policy:
    """``authority.policy.x509`` of a ca.json, as the pinned step-ca evaluates it."""

    def __init__(self, options: dict | None):
        options = options or {}
        allow, deny = options.get("allow") or {}, options.get("deny") or {}
        self.wildcards = bool(options.get("allowWildcardNames", False))
        self.permitted_dns = [normalize_dns_constraint(c) for c in allow.get("dns", [])]
        self.excluded_dns = [normalize_dns_constraint(c) for c in deny.get("dns", [])]
        self.permitted_ip = [self._network(c) for c in allow.get("ip", [])]
        self.excluded_ip = [self._network(c) for c in deny.get("ip", [])]
        self.permitted_cn = [c.strip().lower() for c in allow.get("cn", [])]
        self.excluded_cn = [c.strip().lower() for c in deny.get("cn", [])]
        unsupported = {"email", "uri"} & (set(allow) | set(deny))
        if unsupported:
            raise ValueError(f"this port does not play {sorted(unsupported)} constraints")
        self.permitted = len(self.permitted_dns) + len(self.permitted_ip) + len(self.permitted_cn)
        self.total = self.permitted + len(self.excluded_dns) + len(self.excluded_ip) + len(self.excluded_cn)

    @staticmethod
    def _network(value: str):
        try:
            return ipaddress.ip_network(value, strict=False) if "/" in value else \
                ipaddress.ip_network(ipaddress.ip_address(value))
        except ValueError:
            raise ConfigRefused(f"cannot parse permitted constraint {value!r} as IP nor CIDR") from None

    def _match_domain(self, domain: str, constraint: str) -> bool:
        if constraint == "":
            return True
        if domain == " " or domain.startswith("."):
            return False
        if domain.startswith("*") and not domain.startswith("*."):
            return False
        if domain.startswith("*.") and not self.wildcards:
            return False
        if domain.rfind("*") > 0 or ".." in constraint:
            return False
        names = _labels(domain)
        if names is None:
            raise ValueError(f"cannot parse domain {domain!r}")
        one_more = constraint.startswith(".")
        wanted = _labels(constraint[1:] if one_more else constraint)
        if wanted is None:
            raise ValueError(f"cannot parse domain constraint {constraint!r}")
        if len(names) != len(wanted) + one_more:
            return False
        # labels compared from the top; with a leading dot the name has one label more
        return all(a.lower() == b.lower() for a, b in zip(wanted, names, strict=False))

    def _check(self, name, permitted, excluded, match) -> str | None:
        if any(match(name, c) for c in excluded):
            return "excluded"
        if permitted and not any(match(name, c) for c in permitted):
            return "not permitted"
        return None

    def refusal(self, name: str) -> str | None:
        """Why the pinned CA refuses the SAN ``name`` (None: allowed)."""
        if self.total == 0:
            return None
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            address = None
        if address is not None:
            if not (self.permitted_ip or self.excluded_ip) and self.permitted:
                return f"ip {name} is not explicitly permitted by any constraint"
            why = self._check(address, self.permitted_ip, self.excluded_ip, lambda a, n: a in n)
            return f"ip {name} is {why}" if why else None
        if not (self.permitted_dns or self.excluded_dns) and self.permitted:
            return f"dns {name} is not explicitly permitted by any constraint"
        if _labels(name.removeprefix("*.") if name.startswith("*.") else name) is None:
            return f"cannot parse dns {name!r}"
        why = self._check(name, self.permitted_dns, self.excluded_dns, self._match_domain)
        return f"dns {name} is {why}" if why else None

    def common_name_refusal(self, cn: str) -> str | None:
        """validateCommonName: an explicitly allowed CN passes; otherwise the CN as a SAN."""
        if self.total == 0 or not cn:
            return None
        if (self.permitted_cn or self.excluded_cn) and self._check(
                cn.lower(), self.permitted_cn, self.excluded_cn, lambda a, b: a == b) is None:
            return None
        return self.refusal(cn)


def authority_policy(ca_json: dict) -> X509Policy:
    return X509Policy(((ca_json.get("authority") or {}).get("policy") or {}).get("x509"))


def order_refusal(ca_json: dict, names: list[str]) -> str | None:
    """NewOrder, then the leaf at finalize (forceCN: the first name is the CN): why the pinned
    CA refuses an ACME order for ``names`` by policy (None: it goes on to the challenges)."""
    policy = authority_policy(ca_json)
    for name in names:
        why = policy.refusal(name)
        if why:
            return why
    return policy.common_name_refusal(names[0]) if names else None


def offered_challenges(provisioner: dict, name: str) -> list[str]:
    """The challenges the pinned CA offers a DNS identifier ``name`` under ``provisioner``."""
    for challenge in provisioner.get("challenges") or []:
        if challenge.lower() not in KNOWN_CHALLENGES:
            raise ConfigRefused(f"acme challenge {challenge!r} is not supported")
    enabled = [c.lower() for c in provisioner.get("challenges") or DEFAULT_CHALLENGES]
    kinds = ["dns-01"] + ([] if name.startswith("*.") else ["http-01", "tls-alpn-01"])
    return [k for k in kinds if k in enabled]
