package sandbox

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// checkTimings: every part is filled the way a start fills it, the parts
// add up to Ready, and the VMM's share fits inside Start.
func checkTimings(t *testing.T, what string, ready time.Duration, tm Timings, restored bool) {
	t.Helper()
	if tm.Start <= 0 || tm.Hello <= 0 || tm.VMMCalls < 1 {
		t.Errorf("%s: timings not filled: %+v", what, tm)
	}
	if restored && tm.Resync <= 0 {
		t.Errorf("%s: a restore without resync time: %+v", what, tm)
	}
	if sum := tm.Start + tm.Hello + tm.Resync; sum != ready {
		t.Errorf("%s: start+hello+resync = %s, ready %s", what, sum, ready)
	}
	if vmmPart := tm.Process + tm.Incoming + tm.Resume; vmmPart > tm.Start {
		t.Errorf("%s: the VMM's parts (%s) exceed the start (%s): %+v", what, vmmPart, tm.Start, tm)
	}
}

func TestTimingsBreakReadyDown(t *testing.T) {
	m, _ := fakeManager(t)
	ctx := context.Background()
	e := entry(t, m, "python")
	for _, cold := range []bool{true, false} {
		vm, err := m.Acquire(ctx, e, cold)
		if err != nil {
			t.Fatal(err)
		}
		checkTimings(t, map[bool]string{true: "cold", false: "restore"}[cold], vm.Ready, vm.Timings, !cold)
		vm.Close()
	}
	// A run's result carries them, in its JSON too.
	res, err := m.Run(ctx, RunRequest{Language: "python", Files: []agentproto.File{{Content: []byte("print(1)")}}}, Streams{})
	if err != nil {
		t.Fatal(err)
	}
	checkTimings(t, "run", res.Ready, res.Timings, res.Restored)
	b, _ := json.Marshal(res)
	for _, k := range []string{`"timings":{`, `"process_ns":`, `"incoming_ns":`, `"resume_ns":`, `"hello_ns":`, `"resync_ns":`, `"vmm_calls":`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("run result JSON lacks %s: %s", k, b)
		}
	}
}
