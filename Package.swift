// swift-tools-version: 6.2
// SPDX-License-Identifier: Apache-2.0

import PackageDescription

/// Settings shared by every library target.
let strictMemory: [SwiftSetting] = [.strictMemorySafety()]

let package = Package(
    name: "swift-virtiofsd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "swift-virtiofsd", targets: ["swift-virtiofsd"]),
        .executable(name: "swift-virtiofsd-bench", targets: ["swift-virtiofsd-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // Kernel UAPI headers, vhost-user wire structs and the calls Swift cannot import.
        .target(name: "CVirtioFS"),
        // The only Swift code that calls libc.
        .target(
            name: "VFSSystem",
            dependencies: ["CVirtioFS"],
            swiftSettings: strictMemory
        ),
        // Guest memory regions and checked address translation.
        .target(
            name: "GuestMemory",
            dependencies: ["CVirtioFS", "VFSSystem"],
            swiftSettings: strictMemory
        ),
        // Split virtqueues: descriptor chains, used-ring publication, EVENT_IDX.
        .target(
            name: "Virtqueue",
            dependencies: ["CVirtioFS", "GuestMemory"],
            swiftSettings: strictMemory
        ),
        // The vhost-user back-end: socket, messages, state machine, vring workers.
        .target(
            name: "VhostUser",
            dependencies: [
                "CVirtioFS", "VFSSystem", "GuestMemory", "Virtqueue",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictMemory
        ),
        // FUSE protocol: opcodes, decoding, reply encoding, the FileSystem protocol. No libc, no virtio.
        .target(
            name: "FUSE",
            dependencies: [
                "CVirtioFS", "VFSSystem",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictMemory
        ),
        // The passthrough file system over --shared-dir.
        .target(
            name: "Passthrough",
            dependencies: [
                "CVirtioFS", "VFSSystem", "FUSE",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictMemory
        ),
        // libseccomp and libcap-ng, through pkg-config.
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCapNG", pkgConfig: "libcap-ng", providers: [.apt(["libcap-ng-dev"])]),
        // The sandbox: namespaces or chroot, the seccomp allowlist, the capabilities kept.
        .target(
            name: "Sandbox",
            dependencies: [
                "VFSSystem", "CSeccomp", "CCapNG",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictMemory
        ),
        // Joins vhost-user to the FUSE server.
        .target(
            name: "VirtioFSDevice",
            dependencies: [
                "CVirtioFS", "VFSSystem", "GuestMemory", "Virtqueue", "VhostUser", "FUSE",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictMemory
        ),
        .executableTarget(
            name: "swift-virtiofsd",
            dependencies: [
                "VFSSystem", "VhostUser", "FUSE", "Passthrough", "VirtioFSDevice", "Sandbox",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The host-side load generator: plays the VMM and the guest against a back-end, no QEMU in the way.
        .executableTarget(
            name: "swift-virtiofsd-bench",
            dependencies: [
                "CVirtioFS", "VFSSystem", "GuestMemory", "VhostUser", "VirtqueueDriver", "VhostUserFrontend", "FUSE",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Fuzz targets: the FUSE session (over a file system that answers everything, and over the passthrough
        // on a scratch tree), the split-ring reader over random memory, the vhost-user handler fed random
        // messages and descriptors. Fuzz/run builds the driver with libFuzzer; the tests replay the corpus.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "CVirtioFS", "VFSSystem", "GuestMemory", "Virtqueue", "VhostUser", "FUSE", "Passthrough", "VirtioFSDevice",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(name: "swift-virtiofsd-fuzz", dependencies: ["FuzzTargets"]),
        // Plays QEMU's part over a real socket: the load generator's and the hostile-front-end tests' front-end.
        .target(
            name: "VhostUserFrontend",
            dependencies: ["CVirtioFS", "VFSSystem", "GuestMemory", "VhostUser", "VirtqueueDriver"],
            swiftSettings: strictMemory
        ),
        // Builds real split rings in test memory (the driver's side), for tests and the load generator.
        .target(
            name: "VirtqueueDriver",
            dependencies: ["CVirtioFS", "VFSSystem", "GuestMemory"],
            swiftSettings: strictMemory
        ),

        .testTarget(name: "VFSSystemTests", dependencies: ["VFSSystem", "CVirtioFS"]),
        .testTarget(
            name: "VirtqueueTests",
            dependencies: ["Virtqueue", "VirtqueueDriver", "GuestMemory", "VFSSystem", "CVirtioFS"]
        ),
        .testTarget(
            name: "VhostUserTests",
            dependencies: ["VhostUser", "VirtqueueDriver", "GuestMemory", "VFSSystem", "CVirtioFS"]
        ),
        // Builds FUSE request frames and runs them through a session, for the tests of every layer above FUSE.
        .target(name: "FUSETestSupport", dependencies: ["FUSE", "CVirtioFS"]),

        .testTarget(name: "FUSETests", dependencies: ["FUSE", "FUSETestSupport", "VFSSystem", "CVirtioFS"]),
        .testTarget(
            name: "PassthroughTests", dependencies: ["Passthrough", "FUSE", "FUSETestSupport", "VFSSystem", "CVirtioFS"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "VFSSystem"]),
        .testTarget(name: "IntegrationTests", dependencies: []),
        // Replays the fuzz corpus, and runs each fuzz target briefly under libFuzzer (Fuzz/run).
        .testTarget(name: "FuzzTests", dependencies: []),
        // Attacks on the real daemon process: a front-end that plays QEMU and a malicious guest kernel at once.
        .testTarget(
            name: "HostileFrontendTests",
            dependencies: [
                "CVirtioFS", "VFSSystem", "GuestMemory", "VhostUser", "VirtqueueDriver", "VhostUserFrontend", "FUSE",
                "FUSETestSupport", "Passthrough",
            ]
        ),
    ]
)
