package agent

import (
	"errors"
	"io"
	"os"

	"github.com/firesandbox/firesandbox/internal/agentproto"
)

// outputSink receives a running command's output.
type outputSink func(s agentproto.Stream, data []byte) error

// pump forwards r to sink in chunks until EOF, passing at most limit bytes.
// Past the limit it returns errOutputLimit after forwarding what fits.
func pump(r io.Reader, s agentproto.Stream, limit int64, sink outputSink) error {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		if k > 0 {
			chunk := buf[:k]
			over := n+int64(k) > limit
			if over {
				chunk = chunk[:limit-n]
			}
			n += int64(len(chunk))
			if len(chunk) > 0 {
				if serr := sink(s, chunk); serr != nil {
					return serr
				}
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
