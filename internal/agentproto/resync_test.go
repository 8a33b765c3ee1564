package agentproto

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// A resync sent as the first request on a new channel: the agent's
// greeting (the old identity) arrives first and must not count as its
// answer.
func TestResyncFirstSkipsTheGreeting(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	defer guest.Close()
	resynced := make(chan ResyncRequest, 1)
	go func() {
		w := NewWriter(guest)
		_ = w.WriteJSON(MsgHello, Hello{Protocol: ProtocolVersion, Identity: "template"})
		f, err := ReadFrame(guest)
		if err != nil || f.Type != MsgResync {
			return
		}
		var r ResyncRequest
		_ = r.UnmarshalBinary(f.Payload)
		time.Sleep(20 * time.Millisecond) // the guest's work: the greeting is long read
		resynced <- r
		_ = w.WriteJSON(MsgHello, Hello{Protocol: ProtocolVersion, Identity: r.Identity})
	}()
	c := NewClient(host)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := c.Resync(ctx, ResyncRequest{UnixNanos: 1, Identity: "vm-new"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-resynced:
		if r.Identity != "vm-new" {
			t.Fatalf("agent got identity %q", r.Identity)
		}
	default:
		t.Fatal("Resync returned before the agent had the request")
	}
	if h.Identity != "vm-new" {
		t.Fatalf("Resync answered by the Hello of %q, want the new identity", h.Identity)
	}
	if c.FirstHello().IsZero() {
		t.Fatal("FirstHello not recorded")
	}
}

func TestResyncRoundTrip(t *testing.T) {
	for _, r := range []ResyncRequest{
		{},
		{UnixNanos: -1},
		{UnixNanos: 1764600000123456789, Entropy: bytes.Repeat([]byte{0xa5}, 64), Identity: "vm-0123456789"},
		{Entropy: make([]byte, MaxResyncEntropy), Identity: strings.Repeat("x", MaxResyncIdentity)},
	} {
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("marshal %+v: %v", r, err)
		}
		var got ResyncRequest
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatalf("unmarshal %x: %v", b, err)
		}
		if got.UnixNanos != r.UnixNanos || !bytes.Equal(got.Entropy, r.Entropy) || got.Identity != r.Identity {
			t.Fatalf("round trip: got %+v, want %+v", got, r)
		}
	}
}

func TestResyncRefusesBadPayloads(t *testing.T) {
	good, err := ResyncRequest{UnixNanos: 5, Entropy: []byte("abcd"), Identity: "vm-1"}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":              nil,
		"trailing byte":      append(append([]byte(nil), good...), 0),
		"entropy over bound": {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
		"identity too long":  append(append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0x10, 0), make([]byte, 4096)...),
	}
	for i := 0; i < len(good); i++ { // every truncation
		cases["truncated at "+strings.Repeat("·", i)] = good[:i]
	}
	for name, b := range cases {
		var r ResyncRequest
		if err := r.UnmarshalBinary(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %x: err = %v, want ErrMalformed", name, b, err)
		}
	}
	if _, err := (ResyncRequest{Entropy: make([]byte, MaxResyncEntropy+1)}).MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("marshal over the entropy bound: err = %v, want ErrTooLarge", err)
	}
	if _, err := (ResyncRequest{Identity: strings.Repeat("x", MaxResyncIdentity+1)}).MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("marshal over the identity bound: err = %v, want ErrTooLarge", err)
	}
}
