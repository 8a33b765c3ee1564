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
// The filter is a deny list, so it must cover every system call ABI a
// process can reach: on amd64 the x86_64 table, whose x32 numbers it
// refuses (ENOSYS), and the i386 table behind int 0x80, whose numbers
// differ, with its own deny list (32-bit programs, as users' assembly
// often is, run; their mount is refused as a 64-bit one is). A call
// through any other architecture's entry kills the process.
// A well-kept library was considered (elastic/go-seccomp-bpf): its
// architecture check jumps to the default action, which for a deny list
// would let unlisted ABIs through, so the few instructions are written
// here with x/net/bpf, and tested on its BPF interpreter.

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

// syscallABI is one system call table a process can enter, and the calls
// of it that are refused.
type syscallABI struct {
	arch   uint32   // AUDIT_ARCH_* of seccomp_data
	denied []uint32 // refused with EPERM
	x32    bool     // refuse the x32 numbers (x86_64's table) with ENOSYS
}

// filterProgram assembles the filter: the calls each ABI denies are
// refused with EPERM, and a call through an ABI not listed kills the
// process.
func filterProgram(abis []syscallABI) ([]bpf.RawInstruction, error) {
	var sections [][]bpf.Instruction
	for _, a := range abis {
		if len(a.denied) > 255 {
			return nil, fmt.Errorf("seccomp: %d denied calls do not fit one jump", len(a.denied))
		}
		sec := []bpf.Instruction{bpf.LoadAbsolute{Off: offNR, Size: 4}}
		if a.x32 {
			sec = append(sec,
				bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: x32SyscallBit, SkipFalse: 1},
				bpf.RetConstant{Val: retErrno | uint32(unix.ENOSYS)},
			)
		}
		for i, nr := range a.denied {
			// match: fall through to the EPERM at the end of the list
			sec = append(sec, bpf.JumpIf{Cond: bpf.JumpEqual, Val: nr, SkipTrue: uint8(len(a.denied) - i)})
		}
		sections = append(sections, append(sec,
			bpf.RetConstant{Val: retAllow},
			bpf.RetConstant{Val: retErrno | uint32(unix.EPERM)},
		))
	}
	// The head: load the ABI, one jump per ABI to its section, else kill.
	prog := []bpf.Instruction{bpf.LoadAbsolute{Off: offArch, Size: 4}}
	start := len(abis) + 1 // the first section, counted from after the load
	for i, a := range abis {
		skip := start - i - 1
		if skip > 255 {
			return nil, fmt.Errorf("seccomp: the filter's ABI sections do not fit one jump")
		}
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: a.arch, SkipTrue: uint8(skip)})
		start += len(sections[i])
	}
	prog = append(prog, bpf.RetConstant{Val: retKillProcess})
	for _, sec := range sections {
		prog = append(prog, sec...)
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
		if len(syscallABIs) == 0 {
			filterErr = fmt.Errorf("seccomp: no filter for %s", runtime.GOARCH)
			return
		}
		raw, err := filterProgram(syscallABIs)
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
