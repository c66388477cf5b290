// SPDX-License-Identifier: Apache-2.0

// The fuzz targets' driver. Built with libFuzzer (Fuzz/run builds it so, with coverage and AddressSanitizer),
// it fuzzes: `swift-virtiofsd-fuzz TARGET [libFuzzer options] CORPUS...`. Built plainly (swift build), it
// replays files through a target: `swift-virtiofsd-fuzz TARGET FILE-OR-DIRECTORY...`, which the tests do with
// the corpus in the repository.

import FuzzTargets
import Glibc

let targets: [String: (UnsafeRawBufferPointer) -> Void] = [
    "fuse": FUSEFuzz.answeringFileSystem,
    "passthrough": FUSEFuzz.passthroughFileSystem,
    "chain": ChainFuzz.run,
    "packed": PackedChainFuzz.run,
    "vhost-user": VhostUserFuzz.run,
    "state": StateFuzz.run,
]

nonisolated(unsafe) var current: ((UnsafeRawBufferPointer) -> Void)? = nil

// `seeds DIR`: writes the seed corpus, DIR/TARGET/NAME for each target.
if CommandLine.arguments.count == 3 && CommandLine.arguments[1] == "seeds" {
    let root = CommandLine.arguments[2]
    for (target, seeds) in [("fuse", Seeds.fuse), ("passthrough", Seeds.fuse), ("chain", Seeds.chain), ("packed", Seeds.packed), ("vhost-user", Seeds.vhostUser), ("state", Seeds.state)] {
        FileManagerless.makeDirectory(root)
        FileManagerless.makeDirectory("\(root)/\(target)")
        for (name, data) in seeds { FileManagerless.write(data, to: "\(root)/\(target)/seed-\(name)") }
    }
    exit(0)
}

guard CommandLine.arguments.count >= 2, let target = targets[CommandLine.arguments[1]] else {
    let names = targets.keys.sorted().joined(separator: ", ")
    print("usage: swift-virtiofsd-fuzz TARGET [libFuzzer options] CORPUS... (targets: \(names))\n", terminator: "")
    exit(2)
}
current = target
FUSEFuzz.verbose = getenv("FUZZ_VERBOSE") != nil
// Paths made absolute: the passthrough file system moves the working directory to /proc/self/fd.
let rest = CommandLine.arguments.dropFirst(2).map { argument in
    argument.hasPrefix("-") || argument.hasPrefix("/") ? argument : FileManagerless.currentDirectory() + "/" + argument
}

if CommandLine.arguments[1] == "passthrough" || CommandLine.arguments[1] == "state" {
    // The passthrough target runs as root on a scratch tree (a small tmpfs of its own): everything else is made
    // read-only first.
    var writable = [FileManagerless.currentDirectory()]
    writable += rest.filter { !$0.hasPrefix("-") && FileManagerless.isDirectory($0) }
    FileManagerless.makeDirectory(FUSEFuzz.scratchDirectory)
    guard FuzzConfinement.confine(writable: writable, scratch: FUSEFuzz.scratchDirectory) else {
        print("swift-virtiofsd-fuzz: cannot confine the passthrough target (run it as root)\n", terminator: "")
        exit(1)
    }
}

typealias Driver = @convention(c) (
    UnsafeMutablePointer<CInt>, UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

// RTLD_DEFAULT (nil): the driver is in this executable when it was built with libFuzzer (and exported).
if let symbol = dlsym(nil, "LLVMFuzzerRunDriver") {
    let driver = unsafeBitCast(symbol, to: Driver.self)
    // libFuzzer sees the program name and its own options, not the target's name.
    let arguments = [CommandLine.arguments[0]] + rest
    // Kept for the life of the process: libFuzzer holds on to argv.
    let cArguments = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: arguments.count + 1)
    for (i, argument) in arguments.enumerated() { cArguments[i] = strdup(argument) }
    cArguments[arguments.count] = nil
    var argc = CInt(arguments.count)
    var argv = cArguments
    exit(driver(&argc, &argv) { data, count in
        current?(UnsafeRawBufferPointer(start: data, count: count))
        return 0
    })
}

// Replay: every file named, and every file in every directory named.
var replayed = 0
for path in rest where !path.hasPrefix("-") {
    for file in FileManagerless.files(at: path) {
        guard let data = FileManagerless.contents(of: file) else { continue }
        data.withUnsafeBytes { target($0) }
        replayed += 1
    }
}
print("replayed \(replayed) inputs")
