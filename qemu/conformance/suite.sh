#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
#
# POSIX conformance cases, run as root with busybox and posixcheck on PATH:
#   suite.sh DIR [CASE...]
# DIR is an empty directory on the file system under test (the virtiofs mount in a guest, a local directory
# on the host). Each case prints "== name" and then only what it observed, free of timestamps and inode
# numbers, so that the outputs of two file systems can be compared line by line.
set -u
root=$1
shift
cd "$root" || exit 2
export LC_ALL=C

# What a file is, without times: name, type and mode, size, links, owner.
show() { for f in "$@"; do stat -c '%n %A %s %h %u:%g' "$f" 2>&1; done; }
# Runs a command as uid/gid 1000 (or other), printing its status.
as() { u=$1; shift; posixcheck asuser "$u" "$u" "$@" 2>&1; echo "status $?"; }

case_files() {
    printf 'hello\n' > f1
    printf 'more\n' >> f1
    cat f1
    cp f1 f2
    cmp f1 f2 && echo "copy equal"
    dd if=/dev/zero of=zeros bs=4096 count=256 2>/dev/null
    show f1 f2 zeros
    sha256sum zeros | cut -d' ' -f1
    : > empty
    show empty
    rm f2
    ls -1
}

case_directories() {
    mkdir -p a/b/c
    touch a/b/c/x a/y
    find a | sort
    rmdir a/b/c 2>&1
    rm -r a/b
    find a | sort
    mkdir a 2>&1
    show a
}

case_errors() { posixcheck errors .; }

case_rename() {
    echo one > r1; echo two > r2
    mv r1 r2; cat r2; ls r1 2>&1
    mkdir d1 d2; touch d1/in
    mv d1 d2/moved; find d2 | sort
    mkdir empty-target; mv d2/moved empty-target 2>&1; find empty-target | sort
    mkdir e1 e2; touch e2/occupied
    if mv -T e1 e2 2>/dev/null; then echo "renamed onto a non-empty dir"; else echo "refused onto a non-empty dir"; fi
    mkdir e3; mv -T e1 e3 && echo "renamed onto an empty dir"; ls -d e1 e3 2>&1
    posixcheck rename2 .
}

case_links() {
    echo data > target
    ln target hard; ln -s target soft; ln -s /nowhere/at/all dangling; ln -s ../outside up
    show target hard
    readlink soft dangling up
    cat soft
    cat dangling 2>&1
    rm target; cat hard; cat soft 2>&1
    stat -c '%h' hard
}

case_unlink_open() { posixcheck unlinked .; }

case_truncate() {
    printf '0123456789' > t
    truncate -s 4 t; cat t; echo
    truncate -s 12 t; od -An -c t | tr -s ' '
    truncate -s 0 t; show t
    truncate -s 1G t; show t
}

case_sparse() { posixcheck sparse .; }

# SEEK_DATA/SEEK_HOLE right after writing, answered alike with or without a writeback cache.
case_sparse_written() { posixcheck written .; }

case_append() { posixcheck append . 8; }

case_mmap() { posixcheck mmap .; }

# statx's birth time (FUSE_STATX, 7.39: not with a 6.1 guest).
case_birth_time() { posixcheck btime .; }

# A directory whose group the caller has only as a supplementary group (CREATE_SUPP_GROUP, 7.38 as of Linux
# 6.3: not with a 6.1 guest): creating in it is allowed, and a new file keeps the setgid bit it asks for.
case_supp_group() {
    mkdir g; chown 0:4242 g; chmod 2770 g
    posixcheck asuser 1000 1000,4242 sh -c 'touch g/f; mkdir g/d; posixcheck create g/s 2755; ln -s f g/l; mkfifo g/p' 2>&1
    echo "status $?"
    show g/f g/d g/s g/p
    posixcheck asuser 1000 1000 sh -c 'touch g/other' 2>&1
    echo "status without the group $?"
    posixcheck asuser 1000 1000,4242 chmod 2755 g/f; show g/f
    posixcheck asuser 1000 1000 chmod 2755 g/f; show g/f
}

# The mtime at a write through a mapping, before msync: only with a writeback cache (see posixcheck.c).
case_mapped_mtime() { posixcheck mmap . fault; }

case_tmpfile() { posixcheck tmpfile "$PWD"; }

case_attributes() {
    touch m; chmod 600 m; show m
    chmod 4755 m; show m
    chmod 1777 m; show m
    chown 1000:1000 m; show m
    chown 1234:5678 m; show m
    posixcheck times .
}

case_special_files() {
    mkfifo fifo; mknod chr c 1 3; mknod blk b 7 0
    show fifo chr blk
    stat -c '%n %t:%T' chr blk
}

case_permissions() {
    echo root-only > secret; chmod 600 secret
    echo shared > shared; chmod 644 shared
    mkdir closed; chmod 755 closed
    mkdir open; chmod 1777 open
    touch open/roots
    as 1000 cat secret
    as 1000 sh -c 'echo x >> shared'
    as 1000 touch closed/new
    as 1000 chmod 777 shared
    as 1000 sh -c 'touch open/mine && chmod 600 open/mine && echo own file ok'
    as 1000 rm -f open/roots
    as 1000 chown 0 open/mine
    as 1000 mkdir mine-dir
    show open/mine
    as 1000 sh -c 'echo created > open/by1000; stat -c "%u:%g %a" open/by1000'
}

case_setuid_cleared() {
    echo body > suid; chown 1000:1000 suid; chmod 4777 suid; show suid
    as 1001 sh -c 'echo appended >> suid'
    show suid
    echo body > sgid; chown 1000:1000 sgid; chmod 2777 sgid
    as 1001 sh -c 'echo appended >> sgid'
    show sgid
}

case_locks() { posixcheck locks ./lockfile; }

case_build_like() {
    mkdir -p proj/src proj/include
    i=0
    while [ $i -lt 60 ]; do
        printf '#include "h%d.h"\nint f%d(void) { return %d; }\n' $i $i $i > proj/src/f$i.c
        printf 'int f%d(void);\n' $i > proj/include/h$i.h
        i=$((i + 1))
    done
    tar -cf proj.tar proj && rm -r proj && tar -xf proj.tar && rm proj.tar
    # a build: objects appear as temporaries and are renamed into place, old outputs go away
    mkdir -p proj/build
    for c in proj/src/*.c; do
        o=proj/build/$(basename "$c" .c).o
        j=0
        while [ $j -lt 20 ]; do
            cat "$c" "$c" > "$o.tmp$j"
            mv "$o.tmp$j" "$o.part$j"
            j=$((j + 1))
        done
        cat "$o".part* > "$o.tmp" && rm "$o".part* && mv "$o.tmp" "$o"
    done
    cat proj/build/*.o > proj/build/app
    find proj | sort | while read -r p; do if [ -f "$p" ]; then echo "$(sha256sum < "$p" | cut -c1-16) $p"; else echo "dir $p"; fi; done
    find proj -type f | wc -l
    rm -r proj
    ls -1
}

# Cases that need a set-up the runner makes: --xattr, a tmpfs mounted at DIR/submount, a host process holding
# locks on DIR/held (posixcheck hold), and a read-only share.
case_xattr() { posixcheck xattr ./file; }
case_acl() { posixcheck acl .; }
case_cross_mount() { posixcheck xdev ./file "$root/submount/file"; }
case_host_lock() { posixcheck probe "$root/held"; }
# On a read-only share (DIR holds a file "existing"): every change fails, reading works.
case_readonly() {
    touch new; echo x > existing; rm existing; mkdir d; ln -s a b; chmod 600 existing; mv existing other
    cat existing
}

all="files directories errors rename links unlink_open truncate sparse append mmap tmpfile attributes special_files permissions setuid_cleared locks build_like"
[ $# -gt 0 ] && all="$*"
for c in $all; do
    echo "== $c"
    if [ "$c" = readonly ]; then
        case_readonly 2>&1
        continue
    fi
    mkdir "$root/$c" && cd "$root/$c" || exit 2
    "case_$c" 2>&1
    cd "$root"
done
echo "== end"
