// SPDX-License-Identifier: Apache-2.0

import CSeccomp
import Sandbox
import Testing

@Suite("Sandbox options")
struct SandboxTests {
    @Test("--uid-map and --gid-map lines parse in virtiofsd's :ns:host:count: form and nothing else")
    func namespaceMaps() throws {
        let map = try NamespaceIDMap(parsing: ":0:100000:65536:")
        #expect(map == NamespaceIDMap(namespaceID: 0, hostID: 100000, count: 65536))
        #expect(map.description == ":0:100000:65536:")
        #expect(try NamespaceIDMap(parsing: "/0/1000/1/") == NamespaceIDMap(namespaceID: 0, hostID: 1000, count: 1))
        for bad in ["0:1000:1", ":0:1000:1", ":0:1000:0:", ":0:x:1:", ":0:1000:1:2:", ""] {
            #expect(throws: NamespaceIDMap.Invalid.self) { try NamespaceIDMap(parsing: bad) }
        }
    }

    @Test("the kept capabilities: virtiofsd's set, DAC_READ_SEARCH with file handles, and --modcaps edits")
    func capabilitySet() throws {
        #expect(try Capabilities.set(fileHandles: false, modifications: nil) == Capabilities.defaultSet)
        #expect(try Capabilities.set(fileHandles: true, modifications: nil).contains("dac_read_search"))
        let edited = try Capabilities.set(fileHandles: false, modifications: "-mknod:+CAP_SYS_ADMIN:+chown")
        #expect(!edited.contains("mknod") && edited.contains("sys_admin") && edited.filter { $0 == "chown" }.count == 1)
        #expect(throws: Capabilities.Invalid.self) { try Capabilities.set(fileHandles: false, modifications: "+nonsense") }
        #expect(throws: Capabilities.Invalid.self) { try Capabilities.set(fileHandles: false, modifications: "mknod") }
    }

    @Test("every name on the seccomp allowlist is a system call of this architecture, listed once")
    func allowlist() {
        let names = Seccomp.allowedSyscalls
        #expect(Set(names).count == names.count)
        let unknown = names.filter { seccomp_syscall_resolve_name($0) == __NR_SCMP_ERROR }
        #expect(unknown.isEmpty, "not system calls here: \(unknown)")
    }
}
