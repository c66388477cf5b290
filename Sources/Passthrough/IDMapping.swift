// SPDX-License-Identifier: Apache-2.0

/// A user or group id as one side sees it. The four kinds are distinct types, so that a guest id cannot reach
/// a host system call, or a host id the guest, without passing through an `IDMap`.
public protocol ID: RawRepresentable, Hashable, Sendable, CustomStringConvertible where RawValue == UInt32 {
    init(rawValue: UInt32)
}

extension ID {
    public init(_ value: UInt32) { self.init(rawValue: value) }
    public var description: String { String(rawValue) }
}

public struct GuestUID: ID { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }
public struct GuestGID: ID { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }
public struct HostUID: ID { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }
public struct HostGID: ID { public let rawValue: UInt32; public init(rawValue: UInt32) { self.rawValue = rawValue } }

/// One `--translate-uid` or `--translate-gid` rule, in virtiofsd's syntax:
///
/// | rule | guest to host | host to guest |
/// |---|---|---|
/// | `map:GUEST:HOST:COUNT` | GUEST+i -> HOST+i | HOST+i -> GUEST+i |
/// | `guest:GUEST:HOST:COUNT` | GUEST+i -> HOST+i | - |
/// | `host:HOST:GUEST:COUNT` | - | HOST+i -> GUEST+i |
/// | `squash-guest:GUEST:HOST:COUNT` | GUEST..GUEST+COUNT-1 -> HOST | - |
/// | `squash-host:HOST:GUEST:COUNT` | - | HOST..HOST+COUNT-1 -> GUEST |
/// | `forbid-guest:GUEST:COUNT` | EPERM | - |
public enum IDRule: Equatable, Sendable, CustomStringConvertible {
    case map(guest: UInt32, host: UInt32, count: UInt32)
    case guest(guest: UInt32, host: UInt32, count: UInt32)
    case host(host: UInt32, guest: UInt32, count: UInt32)
    case squashGuest(guest: UInt32, host: UInt32, count: UInt32)
    case squashHost(host: UInt32, guest: UInt32, count: UInt32)
    case forbidGuest(guest: UInt32, count: UInt32)

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses one rule; the message of a failure names the rule and what is wrong with it.
    public init(parsing text: String) throws(Invalid) {
        let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        /// `wanted` numbers, the last a count; the first `ranges` of them start ranges of that length.
        func numbers(_ wanted: Int, ranges: Int) throws(Invalid) -> [UInt32] {
            guard fields.count == wanted + 1 else {
                throw Invalid(description: "'\(text)': \(fields[0]) takes \(wanted) numbers separated by ':'")
            }
            var values: [UInt32] = []
            for field in fields.dropFirst() {
                guard let value = UInt32(field) else { throw Invalid(description: "'\(text)': '\(field)' is not an id") }
                values.append(value)
            }
            let count = UInt64(values.last!)
            guard count > 0 else { throw Invalid(description: "'\(text)': the count must be at least 1") }
            for first in values.prefix(ranges) where UInt64(first) + count - 1 > UInt64(UInt32.max) {
                throw Invalid(description: "'\(text)': the range passes the largest id, \(UInt32.max)")
            }
            return values
        }
        switch fields[0] {
        case "map": let n = try numbers(3, ranges: 2); self = .map(guest: n[0], host: n[1], count: n[2])
        case "guest": let n = try numbers(3, ranges: 2); self = .guest(guest: n[0], host: n[1], count: n[2])
        case "host": let n = try numbers(3, ranges: 2); self = .host(host: n[0], guest: n[1], count: n[2])
        case "squash-guest": let n = try numbers(3, ranges: 1); self = .squashGuest(guest: n[0], host: n[1], count: n[2])
        case "squash-host": let n = try numbers(3, ranges: 1); self = .squashHost(host: n[0], guest: n[1], count: n[2])
        case "forbid-guest": let n = try numbers(2, ranges: 1); self = .forbidGuest(guest: n[0], count: n[1])
        default:
            throw Invalid(description: "'\(text)': the type is one of map, guest, host, squash-guest, squash-host, forbid-guest")
        }
    }

    public var description: String {
        switch self {
        case .map(let g, let h, let c): "map:\(g):\(h):\(c)"
        case .guest(let g, let h, let c): "guest:\(g):\(h):\(c)"
        case .host(let h, let g, let c): "host:\(h):\(g):\(c)"
        case .squashGuest(let g, let h, let c): "squash-guest:\(g):\(h):\(c)"
        case .squashHost(let h, let g, let c): "squash-host:\(h):\(g):\(c)"
        case .forbidGuest(let g, let c): "forbid-guest:\(g):\(c)"
        }
    }
}

/// What a guest id becomes on the host.
public enum HostIDResult<Host: ID>: Equatable, Sendable {
    case id(Host)
    /// `forbid-guest`: the request fails with EPERM.
    case forbidden
}

/// The translation of one kind of id (uids or gids) in both directions, built from rules whose source ranges
/// must not overlap within a direction. An id no rule covers is itself on the other side, as in virtiofsd
/// (with no rules, every id).
public struct IDMap<Guest: ID, Host: ID>: Sendable {
    /// A source range [first, first + count) and where it goes.
    struct Range: Sendable {
        var first: UInt32
        var count: UInt32
        enum Target: Sendable {
            case offset(UInt32)  // first + i -> target + i
            case single(UInt32)  // the whole range -> target
            case forbidden
        }
        var target: Target
        /// The rule that made this range, for the message about an overlap.
        var rule: IDRule

        func contains(_ id: UInt32) -> Bool { id >= first && UInt64(id) - UInt64(first) < UInt64(count) }
        func overlaps(_ other: Range) -> Bool {
            UInt64(first) < UInt64(other.first) + UInt64(other.count) && UInt64(other.first) < UInt64(first) + UInt64(count)
        }
        func apply(_ id: UInt32) -> UInt32? {
            switch target {
            case .offset(let base): base &+ (id - first)
            case .single(let value): value
            case .forbidden: nil
            }
        }
    }

    public static var overflowID: UInt32 { 65534 }

    /// No rules: every id is itself.
    public static var identity: IDMap { IDMap(noRules: ()) }
    private init(noRules: Void) { rules = [] }

    private var guestToHost: [Range] = []
    private var hostToGuest: [Range] = []
    public let rules: [IDRule]

    /// True when no rule was given: both directions are the identity (the fast path of every reply).
    public var isIdentity: Bool { rules.isEmpty }

    public init(_ rules: [IDRule] = []) throws(IDRule.Invalid) {
        self.rules = rules
        var guestToHost: [Range] = []
        var hostToGuest: [Range] = []
        func add(_ first: UInt32, _ count: UInt32, _ target: Range.Target, guestSide: Bool, _ rule: IDRule) throws(IDRule.Invalid) {
            let range = Range(first: first, count: count, target: target, rule: rule)
            let table = guestSide ? guestToHost : hostToGuest
            if let clash = table.first(where: { $0.overlaps(range) }) {
                throw IDRule.Invalid(description: "'\(rule)': its \(guestSide ? "guest" : "host") ids overlap those of '\(clash.rule)'")
            }
            if guestSide { guestToHost.append(range) } else { hostToGuest.append(range) }
        }
        for rule in rules {
            switch rule {
            case .map(let g, let h, let c):
                try add(g, c, .offset(h), guestSide: true, rule)
                try add(h, c, .offset(g), guestSide: false, rule)
            case .guest(let g, let h, let c): try add(g, c, .offset(h), guestSide: true, rule)
            case .host(let h, let g, let c): try add(h, c, .offset(g), guestSide: false, rule)
            case .squashGuest(let g, let h, let c): try add(g, c, .single(h), guestSide: true, rule)
            case .squashHost(let h, let g, let c): try add(h, c, .single(g), guestSide: false, rule)
            case .forbidGuest(let g, let c): try add(g, c, .forbidden, guestSide: true, rule)
            }
        }
        self.guestToHost = guestToHost
        self.hostToGuest = hostToGuest
    }

    /// The host id a guest id stands for.
    @inline(__always)
    public func toHost(_ id: Guest) -> HostIDResult<Host> {
        if isIdentity { return .id(Host(id.rawValue)) }
        for range in guestToHost where range.contains(id.rawValue) {
            guard let value = range.apply(id.rawValue) else { return .forbidden }
            return .id(Host(value))
        }
        return .id(Host(id.rawValue))
    }

    /// The guest id a host id shows as.
    @inline(__always)
    public func toGuest(_ id: Host) -> Guest {
        if isIdentity { return Guest(id.rawValue) }
        for range in hostToGuest where range.contains(id.rawValue) {
            return Guest(range.apply(id.rawValue) ?? Self.overflowID)
        }
        return Guest(id.rawValue)
    }
}

public typealias UIDMap = IDMap<GuestUID, HostUID>
public typealias GIDMap = IDMap<GuestGID, HostGID>
