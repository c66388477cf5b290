// SPDX-License-Identifier: Apache-2.0

import FUSE
import Logging
import Passthrough

/// A migration's session state from a hostile or broken source, taken up by the passthrough file system on the
/// scratch tree: a refusal is fine, a trap or a file outside the tree is not. The input is the file system's
/// part; the header (format, an agreed FUSE 7.41) is put in front, so that the fuzzer spends its time past it.
public enum StateFuzz {
    nonisolated(unsafe) static var server: FUSEServer<PassthroughFileSystem>?
    nonisolated(unsafe) static var inputs = 0

    static var header: [UInt8] {
        var writer = StateWriter()
        writer.u32(0x5346_5653)
        writer.u32(1)
        writer.u32(41)
        writer.u64(0)
        return writer.bytes
    }

    public static func run(_ data: UnsafeRawBufferPointer) {
        inputs += 1
        if server == nil || inputs % 500 == 0 {
            server?.reset()
            server = nil
            ScratchTree.reset(FUSEFuzz.scratchDirectory)
            var options = PassthroughOptions(sharedDirectory: FUSEFuzz.scratchDirectory)
            options.migration = MigrationOptions(onError: data.first.map { $0 & 1 == 0 } ?? true ? .abort : .guestError)
            guard let fs = try? PassthroughFileSystem(options: options, logger: FUSEFuzz.logger) else { return }
            server = FUSEServer(fileSystem: fs, logger: FUSEFuzz.logger)
        }
        guard let server else { return }
        if (try? server.loadState(header + Array(data))) != nil {
            // What was taken up can be saved again, and dropped.
            _ = try? server.saveState()
        }
        server.reset()
    }
}
