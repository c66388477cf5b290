// SPDX-License-Identifier: Apache-2.0

import CCapNG

/// The capabilities a root daemon keeps, with libcap-ng: exactly what serving every operation needs.
public enum Capabilities {
    /// Kept by default (virtiofsd's set): chown, permission overrides for the guest's root, set-id handling,
    /// credential switching per request, device nodes and file capabilities.
    public static let defaultSet = ["chown", "dac_override", "fowner", "fsetid", "setgid", "setuid", "mknod", "setfcap"]

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// The set to keep: the default, DAC_READ_SEARCH when inodes are held as file handles, then `--modcaps`
    /// edits (`+cap:-cap`, names with or without the `cap_` prefix, any case).
    public static func set(fileHandles: Bool, modifications: String?) throws(Invalid) -> [String] {
        // SAFETY: the names' C strings live for each libcap-ng call.
        var kept = defaultSet + (fileHandles ? ["dac_read_search"] : [])
        for item in (modifications ?? "").split(separator: ":") {
            guard let sign = item.first, sign == "+" || sign == "-" else {
                throw Invalid(description: "--modcaps: '\(item)' must start with + or -")
            }
            var name = item.dropFirst().lowercased()
            if name.hasPrefix("cap_") { name.removeFirst(4) }
            guard unsafe capng_name_to_capability(name) >= 0 else {
                throw Invalid(description: "--modcaps: '\(item.dropFirst())' is not a capability")
            }
            if sign == "+" {
                if !kept.contains(name) { kept.append(name) }
            } else {
                kept.removeAll { $0 == name }
            }
        }
        return kept
    }

    /// Drops every capability but `kept` from the effective and permitted sets of this thread (and of the
    /// threads it starts afterwards), and clears the inheritable, ambient and bounding sets.
    public static func drop(keeping kept: [String]) throws(Invalid) {
        // SAFETY: the names' C strings live for each libcap-ng call.
        capng_clear(CAPNG_SELECT_ALL)
        for name in kept {
            let value = unsafe capng_name_to_capability(name)
            guard value >= 0 else { throw Invalid(description: "unknown capability \(name)") }
            let type = capng_type_t(rawValue: CAPNG_EFFECTIVE.rawValue | CAPNG_PERMITTED.rawValue)
            guard capng_update(CAPNG_ADD, type, UInt32(value)) == 0 else {
                throw Invalid(description: "cannot keep capability \(name)")
            }
        }
        let result = capng_apply(CAPNG_SELECT_ALL)
        guard result == 0 else { throw Invalid(description: "capng_apply failed (\(result))") }
    }
}
