//! Names of the numbers a `session.v1.Dns` carries (IANA's DNS parameters registry): the REST
//! API, span names and attributes, and metric labels read them through here, so every stage
//! names a type, class or response code the same way.

/// The mnemonic of a resource record type (`A`, `AAAA`, `AXFR`, …); `None` for a type not in
/// this table (shown as its number).
pub fn type_name(qtype: u32) -> Option<&'static str> {
    Some(match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        24 => "SIG",
        25 => "KEY",
        28 => "AAAA",
        29 => "LOC",
        33 => "SRV",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        39 => "DNAME",
        41 => "OPT",
        42 => "APL",
        43 => "DS",
        44 => "SSHFP",
        45 => "IPSECKEY",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        49 => "DHCID",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        55 => "HIP",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        62 => "CSYNC",
        63 => "ZONEMD",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        108 => "EUI48",
        109 => "EUI64",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        _ => return None,
    })
}

/// The type's mnemonic, else `TYPE<n>` (RFC 3597's notation for unknown types).
pub fn type_label(qtype: u32) -> String {
    type_name(qtype).map_or_else(|| format!("TYPE{qtype}"), str::to_owned)
}

/// The mnemonic of a class (`IN`, `CH`, `HS`, `NONE`, `ANY`); `None` for others.
pub fn class_name(class: u32) -> Option<&'static str> {
    Some(match class {
        1 => "IN",
        3 => "CH",
        4 => "HS",
        254 => "NONE",
        255 => "ANY",
        _ => return None,
    })
}

/// The class's mnemonic, else `CLASS<n>` (RFC 3597).
pub fn class_label(class: u32) -> String {
    class_name(class).map_or_else(|| format!("CLASS{class}"), str::to_owned)
}

/// The name of a response code of the header's 4 bits (RFC 1035, 2136, 6895): `NOERROR`,
/// `NXDOMAIN`, …; `None` for the unassigned ones (12-15).
pub fn rcode_name(rcode: u32) -> Option<&'static str> {
    Some(match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        11 => "DSOTYPENI",
        _ => return None,
    })
}

/// The response code's name, else `RCODE<n>`. Bounded (the header has 4 bits): fit for a metric
/// label.
pub fn rcode_label(rcode: u32) -> String {
    rcode_name(rcode).map_or_else(|| format!("RCODE{rcode}"), str::to_owned)
}

impl crate::session::v1::DnsTransport {
    /// `udp` or `tcp` (OTel's `network.transport` values); `None` when unspecified.
    pub fn short_name(self) -> Option<&'static str> {
        match self {
            Self::Udp => Some("udp"),
            Self::Tcp => Some("tcp"),
            Self::Unspecified => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_numbers_have_names_and_others_keep_their_number() {
        assert_eq!(type_label(1), "A");
        assert_eq!(type_label(28), "AAAA");
        assert_eq!(type_label(252), "AXFR");
        assert_eq!(type_label(65280), "TYPE65280");
        assert_eq!(class_label(1), "IN");
        assert_eq!(class_label(7), "CLASS7");
        assert_eq!(rcode_label(3), "NXDOMAIN");
        assert_eq!(rcode_label(5), "REFUSED");
        assert_eq!(rcode_label(13), "RCODE13");
    }
}
