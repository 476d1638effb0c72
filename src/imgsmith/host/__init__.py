"""The bottom layer: host helpers that every other package may use, and that use nothing of ours
but :mod:`imgsmith.errors` and :mod:`imgsmith.proc`.

One implementation of each: :mod:`.files` (file locks, atomic writes that fsync, chunked
hole-aware hashing, hidden work directories), :mod:`.accel` (which accelerator really
works), :mod:`.rollback` (a stack of host resources mirrored on disk, swept after kill -9)
:mod:`.fuse` (a qemu-storage-daemon FUSE view of an image, recorded in such a stack) and
:mod:`.lazy` (package re-exports loaded on first use).
"""
