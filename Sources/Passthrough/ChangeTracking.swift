// SPDX-License-Identifier: Apache-2.0

import FUSE
import Synchronization
import VFSSystem

/// The timeouts `--cache auto` grants, which follow who last changed a node and when.
///
/// A virtio-fs back-end cannot take back what it granted (Linux's driver has no notification queue): a change
/// made by anyone but the guest stays unseen until the timeout of the reply that last described the node ends.
/// So `auto` keeps every timeout short enough to be a bound (`long`), and shorter still (`short`) for nodes that
/// another party (a host process, another guest's daemon) is changing: those whose ctime, the last time this
/// daemon looked, was later than its own last change to them and is less than `recentWindow` old. What the guest
/// itself changes, through this daemon, keeps the long timeout. Names get the shorter of their directory's
/// timeout and their node's.
public struct AutoTimeouts: Sendable, Equatable, CustomStringConvertible {
    /// For a node another party changed within `recentWindowNanoseconds`.
    public var short: Timeout
    /// For every other node: the longest a change by another party can stay unseen.
    public var long: Timeout
    /// How long a change by another party keeps a node's timeouts short.
    public var recentWindowNanoseconds: Int64

    public init(short: Timeout = Timeout(seconds: 1), long: Timeout = Timeout(seconds: 10), recentWindowSeconds: Int64 = 60) {
        self.short = short
        self.long = long
        self.recentWindowNanoseconds = recentWindowSeconds * 1_000_000_000
    }

    public var description: String {
        func seconds(_ t: Timeout) -> String {
            t.nanoseconds == 0 ? "\(t.seconds) s" : "\(Double(t.seconds) + Double(t.nanoseconds) / 1e9) s"
        }
        return "\(seconds(short)) for what others changed in the last \(recentWindowNanoseconds / 1_000_000_000) s, else \(seconds(long))"
    }
}

extension InodeData {
    /// Records a change this daemon just made to the node (`now` read after its system call returned): a ctime up
    /// to `now` is its own, not another party's. The guest's kernel updates or drops what it cached of the node
    /// after such a request, so what it was told is no longer what it holds.
    @inline(__always)
    func noteOwnChange(at now: Int64) {
        ownChange.store(now, ordering: .relaxed)
        told.store(0, ordering: .relaxed)
    }

    /// Whether the attributes the guest holds of this regular file may no longer describe it, as it opens the
    /// file: the file changed since they were sent (another party changed it: the daemon's own changes clear what
    /// was told), or its last name is gone (the guest reached it through a name another party removed or renamed
    /// over). Any change to a file moves its ctime on: its data, its size, its other attributes, its names.
    @inline(__always)
    func guestMayHoldStaleAttributes(_ stat: FileStat) -> Bool {
        if stat.linkCount == 0 { return true }
        let known = told.load(ordering: .relaxed)
        return known != 0 && known != stat.changeTime.nanosecondsSinceEpoch
    }
}

extension PassthroughFileSystem {
    /// The time timeouts are decided at: the wall clock as of its last tick (a minute's window needs no more),
    /// plus the skew a test set.
    @inline(__always)
    func grantClock() -> Int64 { WallClock.coarseNanoseconds() &+ clockSkew.load(ordering: .relaxed) }

    /// Moves the clock timeouts are decided with `seconds` on, as if that much time had passed (tests).
    public func skewClock(bySeconds seconds: Int64) {
        clockSkew.add(seconds * 1_000_000_000, ordering: .relaxed)
    }

    /// `--cache auto`: records what fresh attributes of `data` say: a ctime later than this daemon's last change
    /// to it is another party's change, which keeps the node's timeouts short until `recentWindow` after it. With
    /// `telling`, the attributes are going to the guest in a reply. Reads the clock only for a change not seen
    /// before.
    @inline(__always)
    func observe(_ data: InodeData, _ stat: FileStat, telling: Bool) {
        let changed = stat.changeTime.nanosecondsSinceEpoch
        if changed > data.ownChange.load(ordering: .relaxed) && changed > data.othersChange.load(ordering: .relaxed) {
            data.othersChange.store(changed, ordering: .relaxed)
            let until = changed &+ recentWindow
            data.shortUntil.store(until > grantClock() ? until : 0, ordering: .relaxed)
        }
        if telling && data.fileType == .regular { data.told.store(changed, ordering: .relaxed) }
    }

    /// `--cache auto`: whether the guest may trust what it is told of `data` now for the short timeout only (for
    /// the long one otherwise). Reads the clock only for a node another party changed lately.
    @inline(__always)
    func isShortLived(_ data: InodeData) -> Bool {
        let until = data.shortUntil.load(ordering: .relaxed)
        return until != 0 && grantClock() < until
    }

    /// `--cache auto`: how long the guest may trust what it is told of `data` now.
    @inline(__always)
    func timeout(of data: InodeData) -> Timeout { isShortLived(data) ? autoShort : autoLong }

    /// `--cache auto`: records the attributes `stat` going to the guest in a reply about `data`, and returns
    /// their timeout.
    @inline(__always)
    func attributeTimeout(_ data: InodeData, _ stat: FileStat) -> Timeout {
        observe(data, stat, telling: true)
        return timeout(of: data)
    }

    /// `--cache auto`: records that this request has just changed `data` (call after the system call).
    @inline(__always)
    func noteOwnChange(_ data: InodeData?) {
        guard tracksChanges, let data else { return }
        data.noteOwnChange(at: WallClock.nanoseconds())
    }

    /// `--cache auto`: records that this request has just changed `a` and `b` (a rename's two directories).
    func noteOwnChange(_ a: InodeData, _ b: InodeData) {
        guard tracksChanges else { return }
        let now = WallClock.nanoseconds()
        a.noteOwnChange(at: now)
        if b !== a { b.noteOwnChange(at: now) }
    }

    /// `--cache auto`: records that this request has just changed the file of node `node`, if the guest holds it.
    @inline(__always)
    func noteOwnChange(node: UInt64) {
        guard tracksChanges else { return }
        noteOwnChange(inodes.get(node))
    }

    /// Close-to-open with the file's size, in `--cache auto`: OPEN answers ESTALE when the attributes the guest
    /// holds of the file may be stale (`guestMayHoldStaleAttributes`: another party changed it since they were
    /// sent, or removed its last name), unless it refused the same guest thread a moment ago.
    ///
    /// An OPEN does not refresh the guest's attributes: without KEEP_CACHE the guest drops the file's pages, but
    /// reads up to the size it holds until its attribute timeout ends, so a file another party made longer would
    /// read short, and a name another party removed would still open the file it named. Given ESTALE, the
    /// guest's VFS walks the path again with LOOKUP_REVAL (do_filp_open), which sends a LOOKUP for each name:
    /// the guest takes the new attributes (and drops pages whose mtime or size changed), or finds the name gone
    /// or naming another file, and opens again. It does so once: that second OPEN (the same thread's next, FUSE
    /// names the thread in the request) is served whatever changed in between (a file renamed over again between
    /// the LOOKUP and the OPEN), as is an open that walks no path (through /proc/PID/fd, or inside the guest's
    /// kernel) the second time it comes.
    @inline(__always)
    func refuseStaleOpen(_ data: InodeData, _ stat: FileStat, _ context: RequestContext) throws(Errno) {
        let stale = data.guestMayHoldStaleAttributes(stat)
        if staleOpenRefusals.refuse(thread: context.pid, stale: stale, now: WallClock.coarseNanoseconds()) { throw .stale }
    }
}

/// The guest threads whose last OPEN was refused with ESTALE (`PassthroughFileSystem.refuseStaleOpen`), so that
/// each one's next OPEN (its retry) is served: a slot per thread id modulo 256, each behind a lock of its own.
final class StaleOpenRefusals: Sendable {
    struct Slot {
        var thread: UInt32 = 0
        /// When the thread was refused; nil when its retry came.
        var refusedAt: Int64? = nil
    }

    static let slots = 256
    /// A refusal older than this lets nothing through: the retry of a path walk comes at once.
    static let retryWindowNanoseconds: Int64 = 1_000_000_000
    private let refusals = Shards<Slot>(count: slots) { Slot() }

    /// Whether to refuse an OPEN from `thread` of a file the guest may hold stale attributes of (`stale`): yes,
    /// unless it is this thread's first OPEN since it was refused (a moment ago).
    func refuse(thread: UInt32, stale: Bool, now: Int64) -> Bool {
        refusals.withLock(Int(thread) % Self.slots) { slot in
            if slot.thread == thread, let at = slot.refusedAt {
                slot.refusedAt = nil
                if now &- at < Self.retryWindowNanoseconds { return false }
            }
            guard stale else { return false }
            slot = Slot(thread: thread, refusedAt: now)
            return true
        }
    }
}
