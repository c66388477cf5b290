// SPDX-License-Identifier: Apache-2.0

import FUSE
import VFSSystem

/// `--xattrmap`: virtiofsd's rules for renaming, hiding and refusing extended attribute names between guest
/// and host (its doc/xattr-mapping.md). A rule is `:type:scope:key:prepend:` with any character in place of
/// `:` (the rule's first non-blank character), or `:map:key:prepend:`; rules follow each other, blanks between.
///
/// A name from the guest (GETXATTR, SETXATTR, REMOVEXATTR, a new file's security label) goes through the first
/// `client` or `all` rule whose key starts it: `prefix` puts the prepend before the whole name, `ok` passes it,
/// `bad` refuses it with EPERM and `unsupported` with ENOTSUP; no rule, EPERM. A name from the host
/// (LISTXATTR) goes through the first `server` or `all` rule whose prepend starts it: `prefix` strips the
/// prepend, `ok` passes it, `bad` and `unsupported` hide it; no rule hides it.
public struct XattrMap: Sendable, Equatable {
    public enum Kind: String, Sendable { case prefix, ok, bad, unsupported }

    public struct Rule: Sendable, Equatable {
        public var kind: Kind
        public var client: Bool
        public var server: Bool
        public var key: [UInt8]
        public var prepend: [UInt8]
    }

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public let rules: [Rule]

    public init(rules: [Rule]) { self.rules = rules }

    public init(parsing text: String) throws(Invalid) {
        let bytes = Array(text.utf8)
        var at = 0
        var rules: [Rule] = []
        var sawMap = false
        func isBlank(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0a || byte == 0x0d }
        while true {
            while at < bytes.count && isBlank(bytes[at]) { at += 1 }
            guard at < bytes.count else { break }
            guard !sawMap else { throw Invalid(description: "a map rule must be the last rule") }
            let start = at
            let separator = bytes[at]
            at += 1
            /// The next field: the bytes up to the next separator, which ends it.
            func field() throws(Invalid) -> [UInt8] {
                guard let end = bytes[at...].firstIndex(of: separator) else {
                    throw Invalid(description: "rule at byte \(start): a field is not ended by '\(Character(Unicode.Scalar(separator)))'")
                }
                defer { at = end + 1 }
                return Array(bytes[at..<end])
            }
            let type = String(decoding: try field(), as: UTF8.self)
            if type == "map" {
                let key = try field()
                let prepend = try field()
                sawMap = true
                if key.isEmpty {
                    rules.append(Rule(kind: .prefix, client: true, server: true, key: [], prepend: prepend))
                    rules.append(Rule(kind: .bad, client: true, server: true, key: [], prepend: []))
                } else {
                    rules.append(Rule(kind: .prefix, client: true, server: true, key: key, prepend: prepend))
                    // Unprefixed names of the mapped kind on the host are hidden; the guest may not name the
                    // prefixed ones itself (it would reach what the map puts there).
                    rules.append(Rule(kind: .bad, client: false, server: true, key: [], prepend: key))
                    rules.append(Rule(kind: .bad, client: true, server: false, key: prepend, prepend: []))
                    rules.append(Rule(kind: .ok, client: true, server: true, key: [], prepend: []))
                }
                continue
            }
            guard let kind = Kind(rawValue: type) else {
                throw Invalid(description: "rule at byte \(start): type '\(type)' is none of prefix, ok, bad, unsupported, map")
            }
            let scope = String(decoding: try field(), as: UTF8.self)
            let (client, server): (Bool, Bool)
            switch scope {
            case "client": (client, server) = (true, false)
            case "server": (client, server) = (false, true)
            case "all": (client, server) = (true, true)
            default: throw Invalid(description: "rule at byte \(start): scope '\(scope)' is none of client, server, all")
            }
            let key = try field()
            let prepend = try field()
            rules.append(Rule(kind: kind, client: client, server: server, key: key, prepend: prepend))
        }
        guard !rules.isEmpty else { throw Invalid(description: "no rules") }
        self.rules = rules
    }

    /// What a guest's name becomes on the host.
    public enum HostName: Equatable, Sendable {
        case name([UInt8])
        case refused(Errno)
    }

    /// The host name for the guest's `name` (without its NUL).
    public func toHost(_ name: some Collection<UInt8>) -> HostName {
        for rule in rules where rule.client && name.starts(with: rule.key) {
            switch rule.kind {
            case .prefix: return .name(rule.prepend + name)
            case .ok: return .name(Array(name))
            case .bad: return .refused(.notPermitted)
            case .unsupported: return .refused(.notSupported)
            }
        }
        return .refused(.notPermitted)
    }

    /// The name the guest sees for the host's `name`, or nil when it is hidden.
    public func toGuest(_ name: some Collection<UInt8>) -> [UInt8]? {
        for rule in rules where rule.server && name.starts(with: rule.prepend) {
            switch rule.kind {
            case .prefix:
                let stripped = Array(name.dropFirst(rule.prepend.count))
                return stripped.isEmpty ? nil : stripped
            case .ok: return Array(name)
            case .bad, .unsupported: return nil
            }
        }
        return nil
    }

    /// A host list of names (each ending in NUL, as listxattr gives them) as the guest sees it.
    public func listToGuest(_ list: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        for name in list.split(separator: 0, omittingEmptySubsequences: true) {
            if let mapped = toGuest(name) { out += mapped + [0] }
        }
        return out
    }
}
