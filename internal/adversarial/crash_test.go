package adversarial

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCrashConsistency kills serve with SIGKILL at points of a
// hibernation and of a resume, restarts it, and checks the sandbox is
// resumable with its data, or lost with its disk kept: never silently
// unresumable, and no sweep removes the only copy of its disk.
func TestCrashConsistency(t *testing.T) {
	h := newHome(t)
	s := h.start("--idle-hibernate", "0")
	dirOf := func(id string) string { return filepath.Join(h.data, "sandboxes", id) }
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	nonEmpty := func(dir string) bool {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Size() > 0 {
				return true
			}
		}
		return false
	}
	create := func() string {
		r := s.do("POST", "/v1/sandboxes", `{"language":"python","disk_mib":64}`)
		if r.status != 201 {
			t.Fatalf("create: %d %s", r.status, r.raw)
		}
		return r.body["id"].(string)
	}
	put := func(id, text string) {
		if r := s.do("POST", "/v1/sandboxes/"+id+"/exec", `{"command":"echo `+text+` > data.txt && sync"}`); r.status != 200 || r.body["exit_code"] != 0.0 {
			t.Fatalf("write: %d %s", r.status, r.raw)
		}
	}
	id := create()
	want := "gen0"
	put(id, want)

	points := []struct {
		name    string
		op      string // hibernate or resume
		reached func(dir string) bool
	}{
		{"hibernation started", "hibernate", func(d string) bool { return exists(filepath.Join(d, "snapshot.tmp")) }},
		{"memory being written", "hibernate", func(d string) bool { return nonEmpty(filepath.Join(d, "snapshot.tmp")) }},
		{"snapshot renamed into place", "hibernate", func(d string) bool { return exists(filepath.Join(d, "snapshot")) }},
		{"resume under way", "resume", func(string) bool { return h.qemus() > 0 }},
	}
	for i, p := range points {
		t.Run(p.name, func(t *testing.T) {
			if p.op == "resume" { // from a clean hibernation
				if r := s.do("POST", "/v1/sandboxes/"+id+"/hibernate", ""); r.status != 200 {
					t.Fatalf("hibernate: %d %s", r.status, r.raw)
				}
				h.waitQemus(0, 30*time.Second)
			}
			go func(url string) { // its answer never comes: serve dies under it
				if resp, err := http.Post(url, "application/json", nil); err == nil {
					resp.Body.Close()
				}
			}(s.url + "/v1/sandboxes/" + id + "/" + p.op)
			deadline := time.Now().Add(2 * time.Minute)
			for !p.reached(dirOf(id)) {
				if time.Now().After(deadline) {
					t.Fatalf("point %q not reached", p.name)
				}
				time.Sleep(time.Millisecond)
			}
			s.kill()
			h.waitQemus(0, 30*time.Second) // its VMs died with it
			s = h.start("--idle-hibernate", "0")
			r := s.do("GET", "/v1/sandboxes/"+id, "")
			switch st := r.body["state"]; st {
			case "hibernated":
				got := s.do("POST", "/v1/sandboxes/"+id+"/exec", `{"cmd":["cat","data.txt"]}`)
				if got.status != 200 || got.body["stdout"] != want+"\n" {
					t.Fatalf("hibernated after the crash, but resuming it gives %d %s", got.status, got.raw)
				}
				t.Logf("crash at %q: hibernated; resumed with its data", p.name)
			case "lost":
				if reason, _ := r.body["reason"].(string); reason == "" {
					t.Errorf("lost without a reason: %s", r.raw)
				}
				if d := filepath.Join(dirOf(id), "disk.ext4"); !exists(d) && !exists(d+".json") { // an image, or layered
					t.Fatalf("lost, and its disk is gone: %s", r.raw)
				}
				t.Logf("crash at %q: lost (%s); its disk is kept", p.name, r.body["reason"])
				if p.op == "resume" {
					t.Errorf("a crash during a resume lost a sandbox whose hibernation was complete")
				}
				if r := s.do("DELETE", "/v1/sandboxes/"+id, ""); r.status != 204 {
					t.Fatalf("delete the lost sandbox: %d %s", r.status, r.raw)
				}
				if exists(dirOf(id)) {
					t.Fatalf("deleting a lost sandbox left its files")
				}
				id = create()
			default:
				t.Fatalf("after the crash the sandbox is %v: %s", st, r.raw)
			}
			want = "gen" + strings.Repeat("x", i+1)
			put(id, want)
		})
	}
}
