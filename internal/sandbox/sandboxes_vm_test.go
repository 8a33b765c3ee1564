package sandbox

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
	"github.com/firesandbox/firesandbox/internal/state"
)

// vmService is a Service over real VMs with its own state directory; the
// templates' snapshots are the data directory's, shared between runs.
func vmService(t *testing.T) (*Service, *Manager) {
	t.Helper()
	m, _ := newTestManager(t)
	svc, err := OpenService(m, ServiceConfig{StateDir: t.TempDir(), MaxVMs: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return svc, m
}

func sh(t *testing.T, s *Sandboxes, id, script string) string {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := s.Exec(ctx, "", id, agentproto.ExecRequest{Argv: []string{"sh", "-c", script}}, &out, &errb)
	if err != nil {
		t.Fatalf("%s: %q: %v", id, script, err)
	}
	if res.Code != 0 {
		t.Fatalf("%s: %q: %+v\nstdout %q\nstderr %q", id, script, res, out.String(), errb.String())
	}
	return out.String()
}

// One template (python, 256 MiB disk), restored for every sandbox: disk
// sandboxes keep to themselves, a fork carries the parent's files and
// diverges from it, twenty pauses lose nothing, a restart of the service
// (its VMs killed, as by kill -9) keeps paused sandboxes, and lifetimes
// end sandboxes by killing or pausing them.
func TestSandboxesOnVMs(t *testing.T) {
	svc, m := vmService(t)
	cur := svc
	t.Cleanup(func() {
		cur.Close(context.Background())
		noLeftovers(t, m)
	})
	s := svc.Sandboxes
	ctx := context.Background()
	create := func(req CreateRequest) state.Sandbox {
		t.Helper()
		req.Language, req.DiskMiB = "python", 256
		sb, err := s.Create(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		vm := s.boxes[sb.ID].vm
		s.mu.Unlock()
		if !vm.Restored {
			t.Fatalf("sandbox %s booted cold: disk sandboxes must restore", sb.ID)
		}
		return sb
	}
	a, b := create(CreateRequest{}), create(CreateRequest{})

	t.Run("disk sandboxes keep to themselves", func(t *testing.T) {
		sh(t, s, a.ID, "echo from-a > mine.txt && mkdir -p d && dd if=/dev/urandom of=d/blob bs=1k count=512 2>/dev/null && sync")
		sh(t, s, b.ID, "echo from-b > mine.txt && touch b-only && sync")
		if got := sh(t, s, a.ID, "cat mine.txt; ls"); got != "from-a\nd\nmine.txt\n" {
			t.Fatalf("a sees %q", got)
		}
		if got := sh(t, s, b.ID, "cat mine.txt; ls"); got != "from-b\nb-only\nmine.txt\n" {
			t.Fatalf("b sees %q", got)
		}
	})

	t.Run("fork", func(t *testing.T) {
		parentBoot := sh(t, s, a.ID, "cat /proc/sys/kernel/random/boot_id")
		kids, err := s.Fork(ctx, "", a.ID, ForkRequest{Count: 2})
		if err != nil {
			t.Fatal(err)
		}
		mustState(t, s, a.ID, state.Running)
		if boot := sh(t, s, a.ID, "cat /proc/sys/kernel/random/boot_id"); boot != parentBoot {
			t.Errorf("the fork changed the parent's boot id: %s -> %s", parentBoot, boot)
		}
		sum := sh(t, s, a.ID, "md5sum d/blob")
		rnd := map[string]string{a.ID: sh(t, s, a.ID, `python3 -c 'import os; print(os.urandom(16).hex())'`)}
		for _, k := range kids {
			if got := sh(t, s, k.ID, "cat mine.txt; md5sum d/blob"); got != "from-a\n"+sum {
				t.Fatalf("child %s sees %q, want the parent's files", k.ID, got)
			}
			r := sh(t, s, k.ID, `python3 -c 'import os; print(os.urandom(16).hex())'`)
			for other, v := range rnd {
				if v == r {
					t.Fatalf("child %s and %s draw the same random bytes", k.ID, other)
				}
			}
			rnd[k.ID] = r
			if boot := sh(t, s, k.ID, "cat /proc/sys/kernel/random/boot_id"); boot == parentBoot {
				t.Errorf("child %s has its parent's boot id %s (the guest agent must give a restored guest a new one)", k.ID, strings.TrimSpace(boot))
			}
		}
		sh(t, s, a.ID, "echo parent > after.txt && sync")
		sh(t, s, kids[0].ID, "echo child > child.txt && echo changed > mine.txt && sync")
		if got := sh(t, s, a.ID, "cat mine.txt; ls"); got != "from-a\nafter.txt\nd\nmine.txt\n" {
			t.Fatalf("the parent after the fork sees %q", got)
		}
		if got := sh(t, s, kids[1].ID, "cat mine.txt; ls"); got != "from-a\nd\nmine.txt\n" {
			t.Fatalf("a child sees %q: writes crossed between sandboxes", got)
		}
	})

	t.Run("twenty pauses lose nothing", func(t *testing.T) {
		for i := range 20 {
			if err := s.WriteFiles(ctx, "", b.ID, []agentproto.File{{Path: fmt.Sprintf("cycle/%02d.txt", i), Content: []byte(fmt.Sprint(i))}}); err != nil {
				t.Fatal(err)
			}
			sh(t, s, b.ID, fmt.Sprintf("echo %d >> log.txt", i))
			if _, err := s.Pause(ctx, "", b.ID); err != nil {
				t.Fatalf("pause %d: %v", i, err)
			}
			if i%2 == 0 { // else the next call resumes it
				if _, err := s.Resume(ctx, "", b.ID, 0); err != nil {
					t.Fatalf("resume %d: %v", i, err)
				}
			}
			want := ""
			for j := 0; j <= i; j++ {
				want += fmt.Sprintf("%d\n", j)
			}
			got := sh(t, s, b.ID, "cat log.txt; cat cycle/*.txt | wc -c")
			if got != want+fmt.Sprintf("%d\n", digits(i)) {
				t.Fatalf("after %d pauses: %q", i+1, got)
			}
		}
	})

	t.Run("a paused sandbox outlives its service", func(t *testing.T) {
		sh(t, s, b.ID, "echo survives > restart.txt && sync")
		if _, err := s.Pause(ctx, "", b.ID); err != nil {
			t.Fatal(err)
		}
		// Gone as by kill -9: no Close; every VM dies with the process
		// (and the next start sweeps what each leaves: vm.Close here).
		s.mu.Lock()
		s.closed = true
		boxes := s.boxes
		s.mu.Unlock()
		close(s.stop)
		s.wg.Wait()
		for _, bx := range boxes {
			if bx.vm != nil {
				bx.vm.Close()
			}
		}
		svc.DB.Close()
		svc2, err := OpenService(m, svc.Config(), nil)
		if err != nil {
			t.Fatal(err)
		}
		cur = svc2
		s2 := svc2.Sandboxes
		mustState(t, s2, a.ID, state.Lost)
		if got := sh(t, s2, b.ID, "cat restart.txt mine.txt"); got != "survives\nfrom-b\n" {
			t.Fatalf("after the restart: %q", got)
		}
		s = s2
	})

	t.Run("timeouts kill or pause", func(t *testing.T) {
		kill := create(CreateRequest{Timeout: 2 * time.Second})
		pause := create(CreateRequest{Timeout: 2 * time.Second, OnTimeout: OnTimeoutPause})
		sh(t, s, pause.ID, "echo still > here.txt")
		deadline := time.Now().Add(time.Minute)
		for {
			k, _ := s.db.Get(ctx, kill.ID)
			p, _ := s.db.Get(ctx, pause.ID)
			if k.State == state.Deleted && p.State == state.Hibernated {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after their timeouts: %s is %s, %s is %s", kill.ID, k.State, pause.ID, p.State)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if got := sh(t, s, pause.ID, "cat here.txt"); got != "still\n" {
			t.Fatalf("a sandbox paused by its timeout lost its files: %q", got)
		}
		s.Delete(ctx, "", pause.ID)
	})
	all, _ := s.List(ctx, "", ListFilter{})
	for _, sb := range all {
		if err := s.Delete(ctx, "", sb.ID); err != nil {
			t.Error(err)
		}
	}
	if ents, _ := os.ReadDir(m.disksDir()); len(ents) != 0 {
		t.Errorf("%d disks left in %s", len(ents), m.disksDir())
	}
}

// digits is how many bytes "0", "1", ... "i" take together.
func digits(i int) int {
	n := 0
	for j := 0; j <= i; j++ {
		n += len(fmt.Sprint(j))
	}
	return n
}
