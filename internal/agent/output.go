package agent

import (
	"errors"
	"io"
	"os"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// outputSink receives a running command's output; data is only valid
// during the call.
type outputSink func(s agentproto.Stream, data []byte)

// pump forwards r to sink in chunks until EOF, passing at most limit bytes
// (0: no limit). Past the limit it returns errOutputLimit after forwarding
// what fits.
func pump(r io.Reader, s agentproto.Stream, limit int64, sink outputSink) error {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			chunk := buf[:k]
			over := limit > 0 && n+int64(k) > limit
			if over {
				chunk = chunk[:limit-n]
			}
			n += int64(len(chunk))
			if len(chunk) > 0 {
				sink(s, chunk)
			}
			if over {
				return errOutputLimit
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
	}
}
