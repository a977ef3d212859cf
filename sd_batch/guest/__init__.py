"""The guests: a Debian kernel plus a busybox initramfs that runs one job and powers off
(`build`, the minimal guest), the same runner on a full Debian root (`full`), what both builders
share (`common`), the initramfs archive made from bytes (`initramfs`), and what host and guest
agree on (`contract`, pure; also in CONTRACT.md); `init.sh` is the guest's /init. No module here
needs root or a hypervisor.

Layer: edge (runs apt, dpkg-deb, mke2fs, qemu-img to build images); `contract` is pure.
May import: errors, config, the standard library.
"""
