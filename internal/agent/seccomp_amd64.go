package agent

import "golang.org/x/sys/unix"

// syscallABIs are the tables a process on amd64 reaches: x86_64's (x32
// numbers refused) and i386's, through int 0x80 (see seccomp.go).
var syscallABIs = []syscallABI{
	{arch: unix.AUDIT_ARCH_X86_64, denied: deniedSyscalls, x32: true},
	{arch: unix.AUDIT_ARCH_I386, denied: deniedSyscalls386},
}

// deniedSyscalls are refused to user processes (see seccomp.go).
var deniedSyscalls = []uint32{
	// kernel modules, kexec, reboot, swap, accounting
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_CREATE_MODULE, unix.SYS_QUERY_MODULE, unix.SYS_GET_KERNEL_SYMS,
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD, unix.SYS_REBOOT,
	unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_ACCT,
	// keyrings
	unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY, unix.SYS_KEYCTL,
	// bpf, perf, userfaultfd, io_uring
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	// mounts and namespaces
	// (not chroot: the forked child calls it before exec, under the filter)
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_FSOPEN, unix.SYS_FSCONFIG,
	unix.SYS_FSMOUNT, unix.SYS_FSPICK, unix.SYS_MOUNT_SETATTR,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	// clocks (the host sets the guest's), kernel log, quotas, raw I/O
	unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME, unix.SYS_ADJTIMEX,
	unix.SYS_SYSLOG, unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD, unix.SYS_IOPL, unix.SYS_IOPERM,
	// legacy and handle-based calls with a history of escapes
	unix.SYS_USELIB, unix.SYS_NFSSERVCTL, unix.SYS__SYSCTL, unix.SYS_LOOKUP_DCOOKIE,
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_VHANGUP,
}

// deniedSyscalls386 are the same calls in the i386 table (the kernel's
// arch/x86/entry/syscalls/syscall_32.tbl), with the i386-only ones that
// belong with them: the old umount, stime, the 64-bit-time clock calls,
// and vm86.
var deniedSyscalls386 = []uint32{
	128, 350, 129, 127, 167, 130, // init_module finit_module delete_module create_module query_module get_kernel_syms
	283, 88, 87, 115, 51, // kexec_load reboot swapon swapoff acct
	286, 287, 288, // add_key request_key keyctl
	357, 336, 374, 425, 426, 427, // bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register
	21, 22, 52, 217, // mount umount umount2 pivot_root
	428, 429, 430, 431, 432, 433, 442, // open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr
	310, 346, // unshare setns
	79, 25, 264, 404, 343, 405, 124, // settimeofday stime clock_settime clock_settime64 clock_adjtime clock_adjtime64 adjtimex
	103, 131, 443, 110, 101, // syslog quotactl quotactl_fd iopl ioperm
	86, 169, 149, 253, 342, 111, // uselib nfsservctl _sysctl lookup_dcookie open_by_handle_at vhangup
	113, 166, // vm86old vm86
}
