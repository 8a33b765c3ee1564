// Package guestkernel prepares what a guest boots: an uncompressed ELF
// vmlinux taken from a distribution kernel package, and an initramfs that
// holds the guest agent as /init plus the few modules it loads.
//
// Prepare reads an unpacked Debian kernel package (boot/vmlinuz-*,
// lib/modules/<release>/) and writes <data>/kernels/<release>/:
//
//	vmlinux         the ELF kernel, booted directly (PVH): no in-guest
//	                decompression, which costs ~2 s under TCG
//	initramfs.cpio  uncompressed newc: /init, /etc/firesandbox/modules*,
//	                /lib/modules/*.ko.xz (still xz: the kernel inflates them)
//	manifest.json   release, digests, module groups, agent version
//
// Module groups: the default group is loaded at every boot; other groups
// (vsock, erofs) only when the kernel command line names them in
// fs.modules=. Each group file lists modules in dependency order.
package guestkernel
