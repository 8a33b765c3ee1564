package sandbox

import (
	"slices"
	"testing"
	"time"
)

func TestTimingsParts(t *testing.T) {
	tm := Timings{Start: 3 * time.Millisecond, Hello: time.Millisecond, Resync: 2 * time.Microsecond}
	got := tm.Parts()
	want := []TimingPart{{"start", 3 * time.Millisecond}, {"hello", time.Millisecond}, {"resync", 2 * time.Microsecond}}
	if !slices.Equal(got[:3], want) {
		t.Fatalf("Parts() = %v, want %v first", got, want)
	}
	for in, want := range map[string]string{"Start": "start", "AgentHello": "agent_hello", "VMMStart": "vmm_start", "PoolWait": "pool_wait", "A": "a"} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}
