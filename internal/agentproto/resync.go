package agentproto

import (
	"encoding/binary"
	"fmt"
)

// A resync is a restored guest's first request, on the critical path of
// every restore, so its payload is binary rather than JSON: a guest
// restored under TCG translates every line of code it runs afresh, and the
// JSON decoder's reflection was a tenth of that first answer. The layout,
// big-endian like the frame header:
//
//	int64   UnixNanos
//	uint16  len(Entropy), then Entropy
//	uint16  len(Identity), then Identity
//
// and nothing after it.

// Bounds of a resync.
const (
	MaxResyncEntropy  = 512
	MaxResyncIdentity = 128
)

// MarshalBinary encodes r as a resync payload.
func (r ResyncRequest) MarshalBinary() ([]byte, error) {
	if len(r.Entropy) > MaxResyncEntropy {
		return nil, fmt.Errorf("%w: resync entropy of %d bytes, at most %d", ErrTooLarge, len(r.Entropy), MaxResyncEntropy)
	}
	if len(r.Identity) > MaxResyncIdentity {
		return nil, fmt.Errorf("%w: resync identity of %d bytes, at most %d", ErrTooLarge, len(r.Identity), MaxResyncIdentity)
	}
	b := make([]byte, 0, 12+len(r.Entropy)+len(r.Identity))
	b = binary.BigEndian.AppendUint64(b, uint64(r.UnixNanos))
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Entropy)))
	b = append(b, r.Entropy...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Identity)))
	return append(b, r.Identity...), nil
}

// UnmarshalBinary decodes a resync payload, refusing one that is short,
// long, or over the bounds.
func (r *ResyncRequest) UnmarshalBinary(b []byte) error {
	bad := func(why string) error { return fmt.Errorf("%w: resync: %s", ErrMalformed, why) }
	if len(b) < 8 {
		return bad("short")
	}
	nanos := int64(binary.BigEndian.Uint64(b))
	b = b[8:]
	field := func(name string, max int) ([]byte, error) {
		if len(b) < 2 {
			return nil, bad("short")
		}
		n := int(binary.BigEndian.Uint16(b))
		if n > max {
			return nil, bad(fmt.Sprintf("%s of %d bytes, at most %d", name, n, max))
		}
		if len(b) < 2+n {
			return nil, bad("short")
		}
		v := b[2 : 2+n]
		b = b[2+n:]
		return v, nil
	}
	entropy, err := field("entropy", MaxResyncEntropy)
	if err != nil {
		return err
	}
	identity, err := field("identity", MaxResyncIdentity)
	if err != nil {
		return err
	}
	if len(b) != 0 {
		return bad(fmt.Sprintf("%d bytes after the identity", len(b)))
	}
	*r = ResyncRequest{UnixNanos: nanos, Identity: string(identity)}
	if len(entropy) > 0 {
		r.Entropy = append([]byte(nil), entropy...)
	}
	return nil
}
