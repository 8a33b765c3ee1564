package sandbox

import (
	"bytes"
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// Every restore of one snapshot shows its commands a boot id of its own,
// which they cannot change; and its start's parts are reported.
func TestRestoresHaveTheirOwnBootID(t *testing.T) {
	m, _ := newTestManager(t)
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := entry(t, m, "bash")
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\n$`)
	seen := map[string]bool{}
	for i := 0; i < 3; i++ {
		vm, err := m.Acquire(ctx, e, false)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 { // the first made the snapshot
			if !vm.Restored {
				t.Fatal("not restored")
			}
			checkTimings(t, "restore", vm.Ready, vm.Timings, true)
		}
		var out, errOut bytes.Buffer
		res, err := vm.Agent.Exec(ctx, agentproto.ExecRequest{Argv: []string{"sh", "-c",
			"cat /proc/sys/kernel/random/boot_id; echo 00000000-0000-4000-8000-000000000000 > /proc/sys/kernel/random/boot_id && echo overwritten"}}, &out, &errOut)
		vm.Close()
		if err != nil {
			t.Fatal(err)
		}
		id := out.String()
		if res.Code == 0 || bytes.Contains(out.Bytes(), []byte("overwritten")) {
			t.Fatalf("a command overwrote its boot id: %q %q", id, errOut.String())
		}
		if !uuid.MatchString(id) {
			t.Fatalf("boot id %q is not a version 4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("two restores share boot id %s", id)
		}
		seen[id] = true
	}
}
