# SPDX-License-Identifier: Apache-2.0
#
# Sourced by the scripts that boot guests (run-guest, run-debian), for their --sync CMD: the guest's job prints
# "@@SYNC TAG" on its output port (request-counter's count_host TAG) and waits for a line on a third serial port
# (ttyS2); the host follows the output as it comes, runs CMD TAG, and answers. So a command on the host (a scrape
# of the daemon's statistics, say) sees the back-end between two steps of the guest's work, with nothing in flight.
# The wait costs about 25 ms a sync under TCG.

# The guest's side of the port that sync_qemu_args gives QEMU (the third -serial), for the job's SYNC_PORT.
sync_guest_port=/dev/ttyS2

# sync_host_start WORK OUTPUT-LOG CMD: starts the follower of OUTPUT-LOG (followed by name: a boot that starts
# again writes a new one) and sets sync_qemu_args, the serial port to give QEMU. CMD's output goes to
# WORK/sync.log. The guest writes the tags: CMD runs only for one of letters, digits, spaces, '_', '.' and '-'
# (not starting with '.'), which is safe as a file name; any other is answered without running CMD, and said.
sync_host_start() {
    local work=$1 output=$2 cmd=$3
    mkfifo "$work/sync.in" "$work/sync.out" "$work/sync.lines"
    # QEMU's pipe chardev reads sync.in (what the guest receives) and writes sync.out, which the guest never uses.
    sync_qemu_args=(-serial "pipe:$work/sync")
    tail -s 0.02 -n +1 -F "$output" > "$work/sync.lines" 2>/dev/null &
    sync_host_pids=$!
    while IFS= read -r line; do
        line=${line%$'\r'}
        case "$line" in
            "@@SYNC "*)
                tag=${line#@@SYNC }
                if [[ "$tag" =~ ^[A-Za-z0-9_\ -][A-Za-z0-9_.\ -]{0,99}$ ]]; then
                    # shellcheck disable=SC2086 # CMD may carry its own arguments
                    $cmd "$tag" >> "$work/sync.log" 2>&1 || echo "sync: the command failed for $tag" >&2
                else
                    echo "sync: a tag that is not a plain name, not run: $(printf '%q' "$tag" | head -c 200)" >&2
                fi
                echo go > "$work/sync.in" ;;
        esac
    done < "$work/sync.lines" &
    sync_host_pids="$sync_host_pids $!"
}

# sync_host_stop: ends the follower (from the booting script's clean-up; nothing when it never started).
sync_host_stop() {
    # shellcheck disable=SC2086
    [ -n "${sync_host_pids:-}" ] && kill $sync_host_pids 2>/dev/null
    return 0
}
