"""Booting images under qemu: accelerator probe, NoCloud seed, runner, serial watcher, SSH check."""
