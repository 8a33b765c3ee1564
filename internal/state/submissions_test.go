package state

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func openSubs(t *testing.T) (*SubmissionStore, *DB, string) {
	t.Helper()
	d, p := open(t)
	s, err := OpenSubmissions(d)
	if err != nil {
		t.Fatal(err)
	}
	return s, d, p
}

func TestSubmissionQueue(t *testing.T) {
	ctx := context.Background()
	s, _, _ := openSubs(t)
	if err := s.Enqueue(ctx, 3, Submission{Token: "a", Tenant: "t1", Status: 1, Request: []byte(`{"a":1}`)},
		Submission{Token: "b", Tenant: "t2", Status: 1, Request: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	// Two queued, limit three: one more fits, two more do not, all or none.
	err := s.Enqueue(ctx, 3, Submission{Token: "c", Tenant: "t1", Status: 1, Request: []byte(`{}`)},
		Submission{Token: "d", Tenant: "t1", Status: 1, Request: []byte(`{}`)})
	if !errors.Is(err, ErrSubmissionQueueFull) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := s.Get(ctx, "t1", "c"); !errors.Is(err, ErrNoSubmission) {
		t.Fatalf("half of a refused batch was stored: %v", err)
	}
	if err := s.Enqueue(ctx, 3, Submission{Token: "a", Tenant: "t1", Request: []byte(`{}`)}); err == nil {
		t.Fatal("duplicate token accepted")
	}
	if q, r, err := s.Counts(ctx); err != nil || q != 2 || r != 0 {
		t.Fatalf("counts %d %d %v", q, r, err)
	}

	// Tenants see only their own.
	if _, err := s.Get(ctx, "t2", "a"); !errors.Is(err, ErrNoSubmission) {
		t.Fatalf("t2 read t1's submission: %v", err)
	}
	many, err := s.GetMany(ctx, "t1", []string{"a", "b", "zz"})
	if err != nil || len(many) != 1 || string(many["a"].Request) != `{"a":1}` {
		t.Fatalf("get many: %v %+v", err, many)
	}

	// FIFO claim.
	got, ok, err := s.Claim(ctx, 2)
	if err != nil || !ok || got.Token != "a" || got.State != SubmissionRunning || got.Status != 2 || got.StartedAt.IsZero() {
		t.Fatalf("claim: %+v %v %v", got, ok, err)
	}
	if _, err := s.Delete(ctx, "t1", "a"); !errors.Is(err, ErrSubmissionActive) {
		t.Fatalf("deleted a running submission: %v", err)
	}
	if err := s.Finish(ctx, "a", 3, []byte(`{"stdout":"x"}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(ctx, "a", 3, nil); !errors.Is(err, ErrNoSubmission) {
		t.Fatalf("finished twice: %v", err)
	}
	a, err := s.Get(ctx, "t1", "a")
	if err != nil || a.State != SubmissionDone || a.Status != 3 || string(a.Result) != `{"stdout":"x"}` || a.FinishedAt.IsZero() {
		t.Fatalf("after finish: %+v %v", a, err)
	}
	if _, err := s.Delete(ctx, "t2", "a"); !errors.Is(err, ErrNoSubmission) {
		t.Fatalf("t2 deleted t1's submission: %v", err)
	}
	del, err := s.Delete(ctx, "t1", "a")
	if err != nil || del.Token != "a" {
		t.Fatalf("delete: %+v %v", del, err)
	}
	if _, err := s.Get(ctx, "t1", "a"); !errors.Is(err, ErrNoSubmission) {
		t.Fatalf("deleted submission still there: %v", err)
	}
	got, ok, _ = s.Claim(ctx, 2)
	if !ok || got.Token != "b" {
		t.Fatalf("second claim: %+v", got)
	}
	if _, ok, _ := s.Claim(ctx, 2); ok {
		t.Fatal("claimed from an empty queue")
	}
}

func TestSubmissionsSurviveReopen(t *testing.T) {
	ctx := context.Background()
	s, d, p := openSubs(t)
	for i := range 3 {
		if err := s.Enqueue(ctx, 0, Submission{Token: fmt.Sprint(i), Tenant: "t", Status: 1, Request: []byte("r")}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Claim(ctx, 2); err != nil { // "0" was running when the process stopped
		t.Fatal(err)
	}
	d.Close()

	d2, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	s2, err := OpenSubmissions(d2)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s2.Requeue(ctx, 1); err != nil || n != 1 {
		t.Fatalf("requeue: %d %v", n, err)
	}
	for _, want := range []string{"0", "1", "2"} { // the interrupted one first: it is the oldest
		got, ok, err := s2.Claim(ctx, 2)
		if err != nil || !ok || got.Token != want {
			t.Fatalf("claim: %+v %v %v, want %s", got, ok, err, want)
		}
		if err := s2.Finish(ctx, got.Token, 3, []byte("done")); err != nil {
			t.Fatal(err)
		}
	}
	list, total, err := s2.List(ctx, "t", 0, 2)
	if err != nil || total != 3 || len(list) != 2 || list[0].Token != "2" {
		t.Fatalf("list: %+v %d %v", list, total, err)
	}
	// Prune what finished before a point in time.
	n, err := s2.Prune(ctx, time.Now().Add(time.Hour))
	if err != nil || n != 3 {
		t.Fatalf("prune: %d %v", n, err)
	}
}
