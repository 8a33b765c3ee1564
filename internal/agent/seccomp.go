package agent

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// User processes run under no_new_privs and a seccomp filter that refuses
// (EPERM) the system calls a sandboxed program never needs: kernel
// modules and keyrings, bpf, perf_event_open, userfaultfd, kexec, mounts,
// namespaces, swap, clocks, reboot and the like. They are the kernel's
// widest attack surface from inside a VM, and none of them is needed to
// compile or run a program.
//
// The filter is a deny list, so it must also refuse every other system
// call ABI: a process of the filter's architecture may not use the x32
// numbers (ENOSYS), and a call through another architecture's entry
// (int 0x80 into the i386 table, whose numbers differ) kills the process.
// A well-kept library was considered (elastic/go-seccomp-bpf): its
// architecture check jumps to the default action, which for a deny list
// would let i386 calls through, so the few instructions are written here
// with x/net/bpf, and tested on its BPF interpreter.

// seccomp_data offsets (linux/seccomp.h).
const (
	offNR   = 0
	offArch = 4
)

// x32SyscallBit marks the x32 ABI's numbers on x86_64.
const x32SyscallBit = 0x40000000

// Return values (linux/seccomp.h).
const (
	retAllow       = 0x7fff0000
	retKillProcess = 0x80000000
	retErrno       = 0x00050000
)

// filterProgram assembles the filter for arch, refusing the calls in
// denied with EPERM.
func filterProgram(arch uint32, denied []uint32) ([]bpf.RawInstruction, error) {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: arch, SkipTrue: 1},
		bpf.RetConstant{Val: retKillProcess},
		bpf.LoadAbsolute{Off: offNR, Size: 4},
	}
	if arch == unix.AUDIT_ARCH_X86_64 {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
			bpf.RetConstant{Val: retErrno | uint32(unix.ENOSYS)},
		)
	}
	for i, nr := range denied {
		// match: fall through to the EPERM at the end of the list
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipTrue: uint8(len(denied) - i)})
	}
	prog = append(prog,
		bpf.RetConstant{Val: retAllow},
		bpf.RetConstant{Val: retErrno | uint32(unix.EPERM)},
	)
	if len(denied) > 255 {
		return nil, fmt.Errorf("seccomp: %d denied calls do not fit one jump", len(denied))
	}
	return bpf.Assemble(prog)
}

var (
	filterOnce sync.Once
	filterProg []unix.SockFilter
	filterErr  error
)

// userFilter is the assembled filter for this architecture.
func userFilter() ([]unix.SockFilter, error) {
	filterOnce.Do(func() {
		if auditArch == 0 {
			filterErr = fmt.Errorf("seccomp: no filter for %s", runtime.GOARCH)
			return
		}
		raw, err := filterProgram(auditArch, deniedSyscalls)
		if err != nil {
			filterErr = err
			return
		}
		for _, r := range raw {
			filterProg = append(filterProg, unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K})
		}
	})
	return filterProg, filterErr
}

// confineThread sets no_new_privs and installs the user filter on the
// calling thread only (no TSYNC): a process forked from this thread
// inherits both, the agent's other threads keep neither.
func confineThread(prog []unix.SockFilter) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		return fmt.Errorf("install seccomp filter: %w", e)
	}
	return nil
}

// startConfined runs start (which forks the user process) on a fresh OS
// thread that carries no_new_privs and the user filter. The thread stays
// parked until release is called, after the process has exited: the
// process's parent-death signal belongs to the thread that forked it, so
// the thread must outlive it. Then the goroutine exits still locked, and
// the runtime ends the thread instead of reusing it.
func startConfined(start func() error) (release func(), err error) {
	prog, err := userFilter()
	if err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		if err := confineThread(prog); err != nil {
			errc <- err
			return
		}
		errc <- start()
		<-done
	}()
	if err := <-errc; err != nil {
		close(done)
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, nil
}
