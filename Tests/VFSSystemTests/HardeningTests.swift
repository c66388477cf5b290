// SPDX-License-Identifier: Apache-2.0

import CVirtioFS
import Glibc
import Synchronization
import Testing
import VFSSystem

@Suite("System layer: waits that can be ended, the socket's owner, what a descriptor is")
struct HardeningTests {
    @Test("a cancelled wait ends with EINTR whether the cancel comes before, during or after the blocking call")
    func cancellableWait() throws {
        // Before: the call never blocks.
        let early = CancellableWait()
        early.cancel()
        #expect(throws: Errno.interrupted) { try early.run { () throws(Errno) in Issue.record("ran after a cancel") } }

        // During: a call blocked for an hour returns at once.
        let wait = CancellableWait()
        let result = Mutex<Errno?>(nil)
        let started = Atomic<Bool>(false)
        let thread = try SystemThread(name: "wait-test") {
            do throws(Errno) {
                try wait.run { () throws(Errno) in
                    started.store(true, ordering: .releasing)
                    var forever = timespec(tv_sec: 3600, tv_nsec: 0)
                    if nanosleep(&forever, nil) != 0 { throw Errno.current }
                }
            } catch {
                result.withLock { $0 = error }
            }
        }
        while !started.load(ordering: .acquiring) { usleep(1000) }
        wait.cancel()
        thread.join()
        #expect(result.withLock { $0 } == .interrupted)

        // After: nothing to do, nothing signalled.
        let done = CancellableWait()
        try done.run { () throws(Errno) in }
        done.cancel()
        #expect(done.isCancelled)
    }

    @Test("a stray EINTR does not end a wait that nobody cancelled")
    func strayInterrupt() throws {
        let wait = CancellableWait()
        var calls = 0
        try wait.run { () throws(Errno) in
            calls += 1
            if calls < 3 { throw .interrupted }
        }
        #expect(calls == 3)
    }

    @Test("the listening socket is 0700, or 0770 and the group's with a group; it appears only once listening")
    func socketOwner() throws {
        let path = "/tmp/socket-owner-\(getpid()).sock"
        defer { unlink(path) }
        do {
            let fd = try UnixSocket.listen(path: path)
            var info = stat()
            #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o700)
            _ = fd
        }
        unlink(path)
        let group = try #require(ProcessControl.groupID(named: "nogroup"))
        let fd = try UnixSocket.listen(path: path, group: group)
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & 0o777 == 0o770 && info.st_gid == group)
        _ = fd
        #expect(ProcessControl.groupID(named: "no-such-group-here") == nil)
        #expect(ProcessControl.groupID(named: "1234") == 1234)
    }

    @Test("a pid file is locked: a second holder is refused and told who holds it; a symlink is refused")
    func pidFile() throws {
        let path = "/tmp/pid-file-\(getpid()).pid"
        defer { unlink(path) }
        unlink(path)
        // The lock belongs to an open file description, so this process's second open of the file is refused
        // as another daemon's would be.
        try PidFile.acquire(path)
        var refused: PidFile.Busy? = nil
        do { try PidFile.acquire(path) } catch { refused = error }
        #expect(refused?.description.contains("pid \(getpid())") == true, "\(refused?.description ?? "not refused")")
        let link = "/tmp/pid-link-\(getpid()).pid"
        defer { unlink(link) }
        symlink("/etc/passwd", link)
        #expect(throws: PidFile.Busy.self) { try PidFile.acquire(link) }
    }

    @Test("an eventfd is told from a file, a pipe, a socket and /dev/null")
    func eventFDs() throws {
        let proc = try ProcSelfDirectory()
        let event = try SharedEventFD()
        #expect(event.descriptor.isEventFD(proc: proc))
        #expect(event.descriptor.isEventFD(proc: nil))
        let null = try FileDescriptor.open("/dev/null", flags: .readOnly)
        #expect(!null.borrowed.isEventFD(proc: proc) && !null.borrowed.isEventFD(proc: nil))
        var fds: [CInt] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(!FileDescriptor(rawValue: fds[1]).isEventFD(proc: proc))
        let pair = try UnixSocket.pair()
        #expect(!pair.first.borrowed.isEventFD(proc: proc))
        let epoll = try Epoll()
        // An anonymous inode, but not an eventfd: only the /proc check tells.
        #expect(!epoll.fd.borrowed.isEventFD(proc: proc))
    }

    @Test("a memory region must lie inside a regular file")
    func regionFiles() throws {
        let memory = try makeMemoryFile(name: "region-test", size: 8192)
        #expect(memory.borrowed.isRegularFile(atLeast: 8192))
        #expect(!memory.borrowed.isRegularFile(atLeast: 8193))
        let null = try FileDescriptor.open("/dev/null", flags: .readOnly)
        #expect(!null.borrowed.isRegularFile(atLeast: 0))
    }

    @Test("a one-time flag says yes once, from any number of threads")
    func oneTimeFlag() throws {
        let flag = OneTimeFlag()
        let yes = Atomic<Int>(0)
        let threads = try (0..<8).map { _ in
            try SystemThread(name: "flag") { for _ in 0..<1000 where flag.first() { yes.add(1, ordering: .relaxed) } }
        }
        threads.forEach { $0.join() }
        #expect(yes.load(ordering: .relaxed) == 1)
    }
}
