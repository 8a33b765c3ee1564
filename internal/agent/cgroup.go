package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// cgroup is one exec's cgroup v2 directory.
type cgroup struct {
	dir string
	f   *os.File // the directory, for clone3's CLONE_INTO_CGROUP
}

func newCgroup(dir string, lim agentproto.Limits) (*cgroup, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	cg := &cgroup{dir: dir}
	set := map[string]string{
		"pids.max":        strconv.FormatInt(lim.Procs, 10),
		"memory.max":      strconv.FormatInt(lim.MemoryBytes, 10),
		"memory.swap.max": "0",
	}
	for k, v := range set {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0); err != nil && !os.IsNotExist(err) {
			cg.remove()
			return nil, fmt.Errorf("set %s: %w", k, err)
		}
	}
	f, err := os.Open(dir)
	if err != nil {
		cg.remove()
		return nil, err
	}
	cg.f = f
	return cg, nil
}

func (cg *cgroup) fd() int { return int(cg.f.Fd()) }

// add moves a running process into the cgroup.
func (cg *cgroup) add(pid int) error {
	return os.WriteFile(filepath.Join(cg.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// kill kills every process in the cgroup, including any that left the
// process group.
func (cg *cgroup) kill() {
	_ = os.WriteFile(filepath.Join(cg.dir, "cgroup.kill"), []byte("1"), 0)
}

type cgroupStats struct {
	cpu      time.Duration
	peak     int64
	oomKills int64
}

func (cg *cgroup) stats() cgroupStats {
	var st cgroupStats
	if v, ok := readKeyed(filepath.Join(cg.dir, "cpu.stat"), "usage_usec"); ok {
		st.cpu = time.Duration(v) * time.Microsecond
	}
	if b, err := os.ReadFile(filepath.Join(cg.dir, "memory.peak")); err == nil {
		st.peak, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	if v, ok := readKeyed(filepath.Join(cg.dir, "memory.events"), "oom_kill"); ok {
		st.oomKills = v
	}
	return st
}

// remove kills what is left and removes the directory, waiting briefly for
// the kernel to reap the members (rmdir fails while any remain).
func (cg *cgroup) remove() {
	if cg.f != nil {
		cg.f.Close()
	}
	cg.kill()
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := os.Remove(cg.dir)
		if err == nil || os.IsNotExist(err) || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readKeyed(path, key string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// EnableControllers turns on the memory, pids and cpu controllers for the
// children of a cgroup v2 directory.
func EnableControllers(dir string) error {
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +pids +cpu"), 0)
}

// Cgroup layout of the guest, below the cgroup v2 root:
//
//	agent/   the agent itself: memory.min and a high cpu.weight, so a
//	         program that hogs memory or CPU cannot starve the channel
//	user/    every user process (each exec in a cgroup of its own below);
//	         together they get the VM's memory less what the agent keeps
const (
	agentMemoryMin  = 32 << 20 // the agent's memory, kept from reclaim
	agentCPUWeight  = 1000     // vs userCPUWeight: the agent wins 10:1 when both want CPU
	userCPUWeight   = 100
	userReserve     = 48 << 20 // memory the users' cgroup leaves to the agent and the kernel
	userPidsMax     = 16384
	minUserMemBytes = 64 << 20
)

// SetupCgroups splits the cgroup v2 hierarchy at root into the agent's
// cgroup (which pid, the agent, joins) and the users' cgroup, and returns
// the users' cgroup, under which each exec gets its own.
func SetupCgroups(root string, pid int, memTotal int64) (string, error) {
	if err := EnableControllers(root); err != nil {
		return "", err
	}
	agent, user := filepath.Join(root, "agent"), filepath.Join(root, "user")
	for _, d := range []string{agent, user} {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return "", fmt.Errorf("create cgroup: %w", err)
		}
	}
	userMax := max(memTotal-userReserve, minUserMemBytes)
	for _, kv := range []struct{ file, value string }{
		{filepath.Join(agent, "memory.min"), strconv.Itoa(agentMemoryMin)},
		{filepath.Join(agent, "cpu.weight"), strconv.Itoa(agentCPUWeight)},
		{filepath.Join(agent, "cgroup.procs"), strconv.Itoa(pid)},
		{filepath.Join(user, "cpu.weight"), strconv.Itoa(userCPUWeight)},
		{filepath.Join(user, "memory.max"), strconv.FormatInt(userMax, 10)},
		{filepath.Join(user, "memory.swap.max"), "0"},
		{filepath.Join(user, "pids.max"), strconv.Itoa(userPidsMax)},
	} {
		if err := os.WriteFile(kv.file, []byte(kv.value), 0); err != nil && !os.IsNotExist(err) {
			return "", fmt.Errorf("set %s: %w", kv.file, err)
		}
	}
	if err := EnableControllers(user); err != nil {
		return "", err
	}
	return user, nil
}

// memTotal is the guest's memory, from /proc/meminfo.
func memTotal() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
