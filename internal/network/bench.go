package network

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// BenchResult is what BenchSetup measured: medians over its runs.
type BenchResult struct {
	Runs   int           `json:"runs"`
	Create time.Duration `json:"create"` // Create, all phases
	Close  time.Duration `json:"close"`
	Phases []Phase       `json:"phases"` // median of each phase of Create
}

// BenchSetup measures what a VM's network adds to its start and stop on
// this host: runs times Create then Close with policy p, one at a time,
// on a Host made from cfg. For `make bench`; it needs root, and it sends
// no traffic.
func BenchSetup(ctx context.Context, cfg Config, p Policy, runs int) (BenchResult, error) {
	if runs < 1 {
		return BenchResult{}, fmt.Errorf("runs must be at least 1")
	}
	h, err := New(cfg)
	if err != nil {
		return BenchResult{}, err
	}
	defer h.Close()
	var creates, closes []time.Duration
	phases := map[string][]time.Duration{}
	var order []string
	for i := range runs {
		t0 := time.Now()
		v, err := h.Create(ctx, fmt.Sprintf("bench-%d", i), p)
		if err != nil {
			return BenchResult{}, err
		}
		creates = append(creates, time.Since(t0))
		for _, ph := range v.SetupPhases() {
			if _, ok := phases[ph.Name]; !ok {
				order = append(order, ph.Name)
			}
			phases[ph.Name] = append(phases[ph.Name], ph.Duration)
		}
		t1 := time.Now()
		if err := v.Close(); err != nil {
			return BenchResult{}, err
		}
		closes = append(closes, time.Since(t1))
	}
	res := BenchResult{Runs: runs, Create: median(creates), Close: median(closes)}
	for _, n := range order {
		res.Phases = append(res.Phases, Phase{n, median(phases[n])})
	}
	return res, nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
