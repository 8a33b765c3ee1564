package agentproto

import (
	"context"
	"net"
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
		_ = DecodeJSON(f, &r)
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
